"""Splitting a sequence of work across ranks: contiguous shards of whole units.

Why whole units (chunks of whole batches): every image is then computed in the very batch the single-process
run puts it in (the same bits), and a rank's finished chunks stay finished when a killed run is resumed.
"""

from __future__ import annotations


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
