"""Splitting a sequence of work across ranks: contiguous shards of whole units.

Why whole units (chunks of whole batches): every image is then computed in the very batch the single-process
run puts it in (the same bits), and a rank's finished chunks stay finished when a killed run is resumed.
"""

from __future__ import annotations

import numpy as np

from vqt.errors import VQTError


def contiguous_shard(count: int, unit: int, rank: int, world_size: int) -> range:
    """The items `[start, stop)` rank `rank` of `world_size` handles: a contiguous run of whole `unit`s.

    The ceil(count / unit) units are dealt out as evenly as whole units allow (earlier ranks never get more
    than one unit fewer than later ones); a rank may get none when there are fewer units than ranks.
    """
    if unit < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad shard request: unit {unit}, rank {rank} of {world_size}")
    units = -(-count // unit)
    first, last = rank * units // world_size, (rank + 1) * units // world_size
    return range(min(first * unit, count), min(last * unit, count))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The batch each rank runs; refuses (one line) a global batch the world size does not divide."""
    if batch_size % world_size:
        raise VQTError(f"--batch-size {batch_size} does not divide over {world_size} ranks: the global batch is the "
                       f"recipe's, each rank runs batch / world size; use a multiple of {world_size}")
    return batch_size // world_size


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous part of a global index batch (equal parts; the last batch's may differ by one)."""
    return np.array_split(batch, world_size)[rank]


def shard(num_items: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of `num_items` items (evaluation)."""
    bounds = np.linspace(0, num_items, world_size + 1).round().astype(int)
    return range(int(bounds[rank]), int(bounds[rank + 1]))
