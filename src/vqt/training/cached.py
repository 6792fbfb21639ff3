"""Training a VQT: from a feature store (no backbone at all) or online from images, with one shared loop.

Both trainers run `_fit_vqt` (the shared loop `fit_epochs`), which differs only in where a batch's `TapOutput`
comes from: the store (`vqt.training.feeding.feed_batches`: resident on the device or streamed from the host)
or the backbone tap on the images (`model.tap`). The model's own `features_from` computes the query path in both
cases, so the VQT math stays in one place (`vqt.backbone.query_path`). With the same recipe and seed the two reach
the same weights up to float rounding (tests/training/test_training.py, `test_cached_training_equals_online_training`;
docs/design.md §1.6). `precision='bf16'` computes the tap and the query path under bf16 autocast and the head,
loss, parameters and Adam state in fp32 (`vqt_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.methods.vqt import VQT, seeded_embed_dropout
from vqt.precision import autocast
from vqt.training.feeding import AnyStore, feed_batches, place_store, sequential_batches
from vqt.training.recipe import Recipe, lr_at_epoch, make_optimizer, order_generator, seeded_query_dropout

STORE_EMBED_DROPOUT = (
    "embed_dropout needs online training: a feature store holds one fixed backbone pass, so embedding dropout "
    "cannot apply (train with train_online / --online, or turn it off)"
)


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


def tap_to(tapped: TapOutput, device: torch.device) -> TapOutput:
    """A CPU batch on `device` (the trainers take device batches from `vqt.training.feeding` instead)."""
    return TapOutput(
        tokens=[t.to(device, non_blocking=True) for t in tapped.tokens],
        pre_logits=tapped.pre_logits.to(device, non_blocking=True),
    )


def image_batches(dataset: Dataset, batches: Sequence[np.ndarray], num_workers: int = 0) -> Iterable:
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers)


def _device(model: VQT) -> torch.device:
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


def vqt_loss(model: VQT, tapped: TapOutput, labels: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """A batch's cross-entropy: the query path under `precision`'s autocast, the head's logits and the loss in
    the master dtype (the head's: fp32, or fp64 for a float64 model), so the parameters' gradients are too."""
    device = _device(model)
    with autocast(precision, device):
        features = model.features_from(tapped)
    return F.cross_entropy(model.head(features.to(model.head.weight.dtype)), labels.to(device))


def _fit_vqt(
    model: VQT,
    num_items: int,
    make_batches: Callable[[list[np.ndarray]], Iterable[tuple[object, torch.Tensor]]],
    to_tap: Callable[[object], TapOutput],
    recipe: Recipe,
    validate: Callable[[], float] | None,
    progress: bool,
    precision: str = "fp32",
) -> History:
    """VQT from stored or tapped tokens: `fit_epochs` with the configuration's own query-dropout masks."""
    device = _device(model)

    def loss_of(inputs: object, labels: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):  # the online tap's backbone pass computes under it too
            tapped = to_tap(inputs)
        return vqt_loss(model, tapped, labels, precision)

    optimizer = make_optimizer(model, recipe)
    with seeded_query_dropout(model, recipe.seed), seeded_embed_dropout(model, recipe.seed):
        return fit_epochs(model, optimizer, recipe, num_items, make_batches, loss_of, validate,
                          progress=progress, stop_on_non_finite=False)


def train_cached(
    model: VQT,
    store: AnyStore,
    recipe: Recipe | None = None,
    *,
    val_store: AnyStore | None = None,
    progress: bool = False,
    precision: str = "fp32",
    store_device: str = "cpu",
) -> History:
    """Train `model` (queries, head) in place from a feature store: no backbone forward at all.

    The store must come from `model`'s backbone (check it with `open_store(..., expect=request_meta(...))`).
    Initialise the model first (e.g. `seed_init(model, recipe.seed)`); this function only trains it.
    `precision` ('fp32' or 'bf16', resolved by `vqt.precision.resolve_precision`) is the query path's compute;
    `store_device` ('cpu' or 'cuda', resolved by `feeding.resolve_store_device`) where both stores' batches are
    gathered (`vqt.training.feeding`).
    """
    if getattr(model, "embed_dropout", False):
        raise VQTError(STORE_EMBED_DROPOUT)
    recipe = recipe or Recipe()
    device = _device(model)
    store = place_store(store, store_device, device)
    if val_store is not None:
        val_store = place_store(val_store, store_device, device)
    validate = (
        (lambda: evaluate_store([model], val_store, precision=precision)[0]) if val_store is not None else None
    )
    return _fit_vqt(
        model,
        len(store),
        lambda batches: feed_batches(store, batches, device),
        lambda tapped: tapped,  # type: ignore[arg-type,return-value]
        recipe,
        validate,
        progress,
        precision,
    )


def train_online(
    model: VQT,
    dataset: Dataset,
    recipe: Recipe | None = None,
    *,
    val_dataset: Dataset | None = None,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
) -> History:
    """Train `model` in place from images: each batch goes through the (no-autograd) backbone tap.

    The same loop, order and dropout draws as `train_cached`; useful with augmentation or without disk space.
    With `precision='bf16'` the backbone pass runs under the same autocast as the query path.
    """
    from vqt.training.evaluate import evaluate_streaming

    recipe = recipe or Recipe()
    device = _device(model)
    validate = (
        (
            lambda: evaluate_streaming(
                [model], val_dataset, batch_size=recipe.batch_size, precision=precision
            ).accuracies[0]
        )
        if val_dataset is not None
        else None
    )
    return _fit_vqt(
        model,
        len(dataset),  # type: ignore[arg-type]
        lambda batches: image_batches(dataset, batches, num_workers),
        lambda images: model.tap(images.to(device)),  # type: ignore[union-attr]
        recipe,
        validate,
        progress,
        precision,
    )


@torch.no_grad()
def evaluate_store(
    models: Sequence[VQT],
    store: AnyStore,
    batch_size: int = 256,
    *,
    precision: str = "fp32",
    store_device: str = "cpu",
) -> list[float]:
    """Accuracy of each model on a store (e.g. val200), reading the store once for all of them."""
    for model in models:
        model.eval()
    if not models:
        return []
    device = _device(models[0])
    store = place_store(store, store_device, device)
    correct = [torch.zeros((), dtype=torch.int64, device=_device(model)) for model in models]
    for tapped, labels in feed_batches(store, sequential_batches(len(store), batch_size), device):
        for index, model in enumerate(models):
            with autocast(precision, device):
                features = model.features_from(tapped_on(tapped, _device(model)))
            logits = model.head(features.to(model.head.weight.dtype))
            correct[index] += (logits.argmax(-1) == labels.to(logits.device)).sum()
    return [int(c) / max(1, len(store)) for c in correct]


def tapped_on(tapped: TapOutput, device: torch.device) -> TapOutput:
    """`tapped` on `device` (a no-op when it is there already: models of one evaluation share a device)."""
    if tapped.pre_logits.device == device:
        return tapped
    return tap_to(tapped, device)
