"""Training one VQT configuration: from a feature store (no backbone at all) or online from images, with the
shared epoch loop (`vqt.training.loop`).

Both trainers run `_fit_vqt` (the shared loop `fit_epochs`), which differs only in where a batch's `TapOutput`
comes from: the store (`vqt.training.feeding.feed_batches`: resident on the device or streamed from the host)
or the backbone tap on the images (`model.tap`). The model's own `features_from` computes the query path in both
cases, so the VQT math stays in one place (`vqt.backbone.query_path`). With the same recipe and seed the two reach
the same weights up to float rounding (tests/training/test_training.py, `test_cached_training_equals_online_training`;
docs/design.md §1.6). `precision='bf16'` computes the tap and the query path under bf16 autocast and the head,
loss, parameters and Adam state in fp32 (`vqt_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.methods.vqt import VQT, seeded_embed_dropout
from vqt.precision import autocast
from vqt.training.evaluate import evaluate_store
from vqt.training.feeding import AnyStore, feed_batches, place_store
from vqt.training.loop import History, fit_epochs, image_batches, model_device
from vqt.training.recipe import Recipe, make_optimizer, seeded_query_dropout

STORE_EMBED_DROPOUT = (
    "embed_dropout needs online training: a feature store holds one fixed backbone pass, so embedding dropout "
    "cannot apply (train with train_online / --online, or turn it off)"
)


def vqt_loss(model: VQT, tapped: TapOutput, labels: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """A batch's cross-entropy: the query path under `precision`'s autocast, the head's logits and the loss in
    the master dtype (the head's: fp32, or fp64 for a float64 model), so the parameters' gradients are too."""
    device = model_device(model)
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
    device = model_device(model)

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
    device = model_device(model)
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
    device = model_device(model)
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
