"""Training a VQT: from a feature store (no backbone at all) or online from images, with one shared loop.

Both trainers run `_fit_vqt` (the shared loop `fit_epochs`), which differs only in where a batch's `TapOutput`
comes from: the store (`FeatureStore.batch`) or the backbone tap on the images (`model.tap`). The model's own
`features_from` computes the query path in both cases, so the VQT math stays in one place
(`vqt.backbone.query_path`). With the same recipe and seed the two reach the same weights up to float rounding
(tests/test_training.py, `test_cached_training_equals_online_training`; docs/design.md §1.6).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from queue import Queue
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.features.store import FeatureStore
from vqt.methods.vqt import VQT, seeded_embed_dropout
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
    return TapOutput(
        tokens=[t.to(device, non_blocking=True) for t in tapped.tokens],
        pre_logits=tapped.pre_logits.to(device, non_blocking=True),
    )


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Produce the next items (store reads: page-ins and gathers, which release the GIL) in a thread."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            for item in iterable:
                queue.put(item)
        except BaseException as error:  # re-raised in the consumer
            failure.append(error)
        finally:
            queue.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        item = queue.get()
        if item is done:
            break
        yield item
    thread.join()
    if failure:
        raise failure[0]


def store_batches(store: FeatureStore, batches: Sequence[np.ndarray], threaded: bool = True) -> Iterator:
    reads = (store.batch(index) for index in batches)
    return prefetch(reads) if threaded else reads


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
) -> History:
    """The one training loop: the recipe's per-epoch lr, its batch order, mean loss and validation per epoch.

    `trained` is put in train mode every epoch (its caller's `validate` may switch it to eval) and in eval mode at
    the end; `make_batches` turns an epoch's index batches into (inputs, labels); `loss_of` gives a batch's loss.
    With `stop_on_non_finite` a NaN/inf epoch loss ends training (the caller marks the run failed).
    """
    generator = order_generator(recipe.order_seed)
    history = History()
    for epoch in tqdm(range(recipe.epochs), desc="train", unit="epoch", disable=not progress):
        lr = lr_at_epoch(recipe, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        trained.train()
        total, seen = 0.0, 0
        for inputs, labels in make_batches(epoch_batches(num_items, recipe, generator)):
            loss = loss_of(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(labels)
            seen += len(labels)
        history.lr.append(lr)
        history.train_loss.append(total / max(1, seen))
        if stop_on_non_finite and not math.isfinite(history.train_loss[-1]):
            break
        last = epoch == recipe.epochs - 1
        run_val = validate is not None and (last or (epoch + 1) % recipe.eval_every == 0)
        history.val_accuracy.append(validate() if run_val else None)  # type: ignore[misc]
    trained.eval()
    return history


def _fit_vqt(
    model: VQT,
    num_items: int,
    make_batches: Callable[[list[np.ndarray]], Iterable[tuple[object, torch.Tensor]]],
    to_tap: Callable[[object], TapOutput],
    recipe: Recipe,
    validate: Callable[[], float] | None,
    progress: bool,
) -> History:
    """VQT from stored or tapped tokens: `fit_epochs` with the configuration's own query-dropout masks."""
    device = _device(model)

    def loss_of(inputs: object, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.head(model.features_from(to_tap(inputs))), labels.to(device))

    optimizer = make_optimizer(model, recipe)
    with seeded_query_dropout(model, recipe.seed), seeded_embed_dropout(model, recipe.seed):
        return fit_epochs(model, optimizer, recipe, num_items, make_batches, loss_of, validate,
                          progress=progress, stop_on_non_finite=False)


def train_cached(
    model: VQT,
    store: FeatureStore,
    recipe: Recipe | None = None,
    *,
    val_store: FeatureStore | None = None,
    progress: bool = False,
) -> History:
    """Train `model` (queries, head) in place from a feature store: no backbone forward at all.

    The store must come from `model`'s backbone (check it with `open_store(..., expect=request_meta(...))`).
    Initialise the model first (e.g. `seed_init(model, recipe.seed)`); this function only trains it.
    """
    if getattr(model, "embed_dropout", False):
        raise VQTError(STORE_EMBED_DROPOUT)
    recipe = recipe or Recipe()
    device = _device(model)
    validate = (lambda: evaluate_store([model], val_store)[0]) if val_store is not None else None
    return _fit_vqt(
        model,
        len(store),
        lambda batches: store_batches(store, batches),
        lambda tapped: tap_to(tapped, device),  # type: ignore[arg-type]
        recipe,
        validate,
        progress,
    )


def train_online(
    model: VQT,
    dataset: Dataset,
    recipe: Recipe | None = None,
    *,
    val_dataset: Dataset | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> History:
    """Train `model` in place from images: each batch goes through the (no-autograd) backbone tap.

    The same loop, order and dropout draws as `train_cached`; useful with augmentation or without disk space.
    """
    from vqt.training.evaluate import evaluate_streaming

    recipe = recipe or Recipe()
    device = _device(model)
    validate = (
        (lambda: evaluate_streaming([model], val_dataset, batch_size=recipe.batch_size).accuracies[0])
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
    )


@torch.no_grad()
def evaluate_store(models: Sequence[VQT], store: FeatureStore, batch_size: int = 256) -> list[float]:
    """Accuracy of each model on a store (e.g. val200), reading the store once for all of them."""
    correct = [0] * len(models)
    for model in models:
        model.eval()
    for tapped, labels in store_batches(
        store, [np.arange(s, min(s + batch_size, len(store))) for s in range(0, len(store), batch_size)]
    ):
        for index, model in enumerate(models):
            logits = model.head(model.features_from(tap_to(tapped, _device(model))))
            correct[index] += int((logits.argmax(-1).cpu() == labels).sum())
    return [c / max(1, len(store)) for c in correct]
