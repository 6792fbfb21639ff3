"""Data-parallel training from images over the ranks of a process group (`DistributedDataParallel`).

What makes N ranks follow the 1-process run (tests/training/test_ddp.py):
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

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from vqt.distributed.context import all_reduce_sum, world
from vqt.distributed.shards import per_rank_batch, rank_slice
from vqt.methods.vqt import VQT
from vqt.precision import autocast, to_master
from vqt.training.loop import History, fit_epochs, image_batches
from vqt.training.recipe import Recipe, make_optimizer


class Logits(nn.Module):
    """The logits a method trains on, as the 1-process loops compute them (what DDP wraps and calls forward on).

    VQT: the tap and query path under `precision`'s autocast, the head in fp32 (`vqt.training.trainers.vqt_loss`);
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
