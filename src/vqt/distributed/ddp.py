"""Data-parallel training from images over the ranks of a process group (`DistributedDataParallel`).

What makes N ranks follow the 1-process run (tests/test_distributed_ddp.py):
- the global batch is the recipe's batch and the global order of images is the single-process order
  (`epoch_batches` from the recipe's data seed, drawn identically on every rank); each rank takes its contiguous
  slice of every global batch (per-rank batch = batch / world size, which must divide);
- a rank's loss is its slice's summed cross-entropy x world / global batch length, so DDP's gradient average is
  the global batch's mean gradient, also for the last, partial batch whose slices may differ in length (a rank
  whose slice is empty runs one image with weight 0, so that every rank joins every all-reduce);
- the recorded loss is the global mean (per-sample losses and counts all-reduced per epoch), so every rank sees
  the same NaN and stops together; evaluation is sharded the same way and accuracies are all-reduced as counts.

Dropout draws per rank (each rank's own slice shape), so with dropout on the run is equivalent in distribution to
the 1-process one but not equal to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from vqt.errors import VQTError
from vqt.methods.vqt import VQT
from vqt.precision import autocast, to_master
from vqt.training import History, Recipe
from vqt.training.cached import fit_epochs, image_batches
from vqt.training.recipe import make_optimizer


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def use_ddp(requested: bool | None) -> bool:
    """None: DDP when a process group with more than one rank is initialised; False: never (e.g. the sweep, whose
    ranks train different units); True: required."""
    if requested is False:
        return False
    active = world()[1] > 1
    if requested and not active:
        raise VQTError("distributed training asked for, but no process group of more than one rank is initialised "
                       "(launch with torchrun --nproc_per_node N)")
    return active


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


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over the ranks (float64; on the process group's device for NCCL)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    on = device if device is not None and dist.get_backend() != "gloo" else torch.device("cpu")
    tensor = torch.tensor(list(values), dtype=torch.float64, device=on)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


class Logits(nn.Module):
    """The logits a method trains on, as the 1-process loops compute them (what DDP wraps and calls forward on).

    VQT: the tap and query path under `precision`'s autocast, the head in fp32 (`vqt.training.cached.vqt_loss`);
    other methods: the model under autocast, logits cast to fp32.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        device = images.device
        if isinstance(model, VQT):
            with autocast(self.precision, device):
                features = model.features_from(model.tap(images))
            return model.head(features.to(model.head.weight.dtype))
        with autocast(self.precision, device):
            logits = model(images)
        return to_master(logits)


def fit_ddp(
    model: nn.Module,
    dataset: Dataset,
    recipe: Recipe,
    *,
    validate: Callable[[], float] | None = None,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    stop_on_non_finite: bool = True,
) -> History:
    """Train `model` in place from images with DDP over the default process group (the recipe's global batch and
    order; see the module's docstring). `validate` must itself be sharded and all-reduced (same value everywhere)."""
    rank, world_size = world()
    per_rank_batch(recipe.batch_size, world_size)
    device = model.head.weight.device
    wrapped = DistributedDataParallel(Logits(model, precision),
                                      device_ids=[device.index] if device.type == "cuda" else None)
    sums = [0.0, 0.0]  # this epoch's summed per-sample losses and samples, on this rank

    def batches(index_batches: list[np.ndarray]) -> Iterator[tuple[tuple[torch.Tensor, int, bool], torch.Tensor]]:
        slices = [rank_slice(batch, rank, world_size) for batch in index_batches]
        stand_in = np.zeros(1, dtype=np.int64)  # an empty slice runs one image with weight 0
        loader = image_batches(dataset, [s if len(s) else stand_in for s in slices], num_workers)
        for (images, labels), part, whole in zip(loader, slices, index_batches, strict=True):
            yield (images, len(whole), len(part) == 0), labels

    def loss_of(inputs: tuple[torch.Tensor, int, bool], labels: torch.Tensor) -> torch.Tensor:
        images, global_len, empty = inputs
        logits = wrapped(images.to(device))
        summed = F.cross_entropy(logits, labels.to(device), reduction="sum")
        if empty:
            return summed * 0.0
        sums[0] += float(summed.detach())
        sums[1] += len(labels)
        return summed * (world_size / global_len)

    def epoch_loss(_total: float, _seen: int) -> float:
        total, seen = all_reduce_sum(sums, device)
        sums[0] = sums[1] = 0.0
        return total / max(1.0, seen)

    return fit_epochs(model, make_optimizer(model, recipe), recipe, len(dataset),  # type: ignore[arg-type]
                      batches, loss_of, validate, progress=progress, stop_on_non_finite=stop_on_non_finite,
                      epoch_loss=epoch_loss)
