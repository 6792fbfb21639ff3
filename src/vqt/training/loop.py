"""The one epoch loop every trainer shares (single configuration, online, DDP): the per-epoch lr of the recipe,
the data order from its seed, a NaN stop, and the per-epoch record (`History`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqt.training.recipe import Recipe, lr_at_epoch, order_generator


@dataclass
class History:
    """Per-epoch record of a run: learning rate, mean training loss, validation accuracy (None if not run)."""

    lr: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)

    @property
    def final_val_accuracy(self) -> float | None:
        """The last epoch's validation accuracy (what the protocol judges a configuration by), or None."""
        return self.val_accuracy[-1] if self.val_accuracy else None

    def to_dict(self) -> dict:
        """The three per-epoch lists as a plain dict (what a run records)."""
        return {"lr": self.lr, "train_loss": self.train_loss, "val_accuracy": self.val_accuracy}


def epoch_batches(num_items: int, recipe: Recipe, generator: torch.Generator) -> list[np.ndarray]:
    """One epoch's shuffled index batches; every trainer (cached, online, grid) draws them this way."""
    order = torch.randperm(num_items, generator=generator).numpy()
    batches = [order[start : start + recipe.batch_size] for start in range(0, num_items, recipe.batch_size)]
    if recipe.drop_last and batches and len(batches[-1]) < recipe.batch_size:
        batches.pop()
    return batches


def image_batches(dataset: Dataset, batches: Sequence[np.ndarray], num_workers: int = 0) -> Iterable:
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers)


def model_device(model: nn.Module) -> torch.device:
    return model.head.weight.device


def fit_epochs(
    trained: nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    num_items: int,
    make_batches: Callable[[list[np.ndarray]], Iterable[tuple[Any, torch.Tensor]]],
    loss_of: Callable[[Any, torch.Tensor], torch.Tensor],
    validate: Callable[[], float] | None = None,
    *,
    progress: bool = False,
    stop_on_non_finite: bool = True,
    epoch_loss: Callable[[float, int], float] | None = None,
) -> History:
    """The one training loop: the recipe's per-epoch lr, its batch order, mean loss and validation per epoch.

    `trained` is put in train mode every epoch (its caller's `validate` may switch it to eval) and in eval mode at
    the end; `make_batches` turns an epoch's index batches into (inputs, labels); `loss_of` gives a batch's loss.
    With `stop_on_non_finite` a NaN/inf epoch loss ends training (the caller marks the run failed).
    `epoch_loss(total, seen)` gives the epoch's recorded loss (default total / seen; DDP: the mean over all ranks).
    """
    generator = order_generator(recipe.order_seed)
    history = History()
    for epoch in tqdm(range(recipe.epochs), desc="train", unit="epoch", disable=not progress):
        lr = lr_at_epoch(recipe, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        trained.train()
        total: float | torch.Tensor = 0.0
        seen = 0
        for inputs, labels in make_batches(epoch_batches(num_items, recipe, generator)):
            loss = loss_of(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach().double() * len(labels)  # on the loss's device: no sync per batch
            seen += len(labels)
        history.lr.append(lr)
        history.train_loss.append(epoch_loss(float(total), seen) if epoch_loss else float(total) / max(1, seen))
        if stop_on_non_finite and not math.isfinite(history.train_loss[-1]):
            break
        last = epoch == recipe.epochs - 1
        run_val = validate is not None and (last or (epoch + 1) % recipe.eval_every == 0)
        history.val_accuracy.append(validate() if run_val else None)  # type: ignore[misc]
    trained.eval()
    return history
