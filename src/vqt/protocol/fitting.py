"""Training a list of configurations of one method, from a feature store or from images.

VQT trains with the library's trainers (`train_grid` from a store, `train_online` from images). Linear probing and
Head2Toe only train a head on features that do not change, so their features are read from the store once and
the head is trained with the same recipe (Adam, coupled decay, warm-up + cosine per epoch, same batch order).
Feature-adapting methods train online with a plain loop. Any configuration whose loss becomes NaN/inf is stopped
and marked failed; the others go on.

`precision` is the run's resolved compute precision ('fp32' or 'bf16', `vqt.precision`): VQT hands it to its
trainers, the online loop runs its forward under `vqt.precision.autocast`; the head-only methods train their head
on fixed fp32 features. `store_device` ('auto', 'cpu', 'cuda') says where a VQT training store is held
(`vqt.training.feeding.resolve_store_device` decides 'auto' from the store's size and the free GPU memory).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vqt.distributed.context import use_ddp, world
from vqt.errors import VQTError
from vqt.features import FeatureStore
from vqt.methods.registry import create_method, get_method
from vqt.methods.vqt import VQT, seeded_embed_dropout
from vqt.precision import autocast, to_master
from vqt.protocol.accuracy import evaluate_images, shared_store_features
from vqt.training import GridConfig, History, Recipe, seed_init, train_grid, train_online
from vqt.training.ddp import fit_ddp
from vqt.training.feeding import resolve_store_device, store_nbytes
from vqt.training.loop import fit_epochs, image_batches
from vqt.training.recipe import make_optimizer, seeded_query_dropout


def build_model(method: str, backbone: nn.Module, num_classes: int, kwargs: dict, seed: int) -> nn.Module:
    """A fresh model of `method` initialised from `seed` (VQT: exactly as `train_grid` initialises it)."""
    if get_method(method).adapts_features or not get_method(method).store_trainable:
        backbone = copy.deepcopy(backbone)  # adapting methods change the backbone in place
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_method(method, backbone, num_classes, **kwargs)
    if isinstance(model, VQT):
        seed_init(model, seed)
    return model


def make_recipe(**fields: Any) -> Recipe:
    """A `Recipe`, with inconsistent settings (e.g. more warm-up than epochs) reported as user errors."""
    try:
        return Recipe(**fields)
    except ValueError as error:
        raise VQTError(f"invalid training settings: {error}") from error

def _store_device(choice: str, stores: Sequence[FeatureStore | None], device: torch.device) -> str:
    """'cpu' or 'cuda' for the stores a VQT training reads ('auto': decided from their size and free memory)."""
    return resolve_store_device(choice, sum(store_nbytes(store) for store in stores if store is not None), device)


def non_finite(history: History) -> bool:
    return any(not math.isfinite(loss) for loss in history.train_loss)


@dataclass
class Trained:
    """One trained configuration: its history, the model (None when failed) and why it failed."""

    config: GridConfig
    history: History
    model: nn.Module | None
    failed: str | None = None


def _failure(history: History) -> str:
    epoch = next(i for i, loss in enumerate(history.train_loss) if not math.isfinite(loss))
    return f"non-finite training loss at epoch {epoch + 1}"


def fit_head(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> History:
    """Train `model.head` on fixed features with the recipe's optimiser, schedule and batch order."""
    head = model.head

    def batches(index_batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in index_batches:
            index_t = torch.from_numpy(index).to(features.device)
            yield features[index_t], labels[index_t]

    def validate() -> float:
        head.eval()
        with torch.no_grad():
            return float((head(val[0]).argmax(-1) == val[1]).double().mean())  # type: ignore[index]

    return fit_epochs(head, make_optimizer(model, recipe), recipe, len(labels), batches,
                      lambda inputs, targets: F.cross_entropy(head(inputs), targets),
                      validate if val is not None else None)


def train_store_configs(
    method: str,
    backbone: nn.Module,
    num_classes: int,
    kwargs: dict,
    train_store: FeatureStore,
    configs: Sequence[GridConfig],
    recipe: Recipe,
    *,
    val_store: FeatureStore | None = None,
    progress: bool = False,
    feature_cache: dict | None = None,
    precision: str = "fp32",
    store_device: str = "cpu",
) -> list[Trained]:
    """Train every configuration from the store. VQT: one `train_grid` pass; head methods: fixed features."""
    device = next(backbone.parameters()).device
    training = get_method(method).training
    if training == "store-grid":
        template = build_model(method, backbone, num_classes, kwargs, 0).to(device)
        placement = _store_device(store_device, [train_store, val_store], device)
        result = train_grid(template, train_store, configs, recipe, val_store=val_store, progress=progress,
                            precision=precision, store_device=placement)
        trained = []
        for index, (config, history) in enumerate(zip(result.configs, result.histories, strict=True)):
            if non_finite(history):
                trained.append(Trained(config, history, None, _failure(history)))
            else:
                trained.append(Trained(config, history, result.model(index)))
        return trained
    if training != "store-head":
        raise VQTError(f"method {method!r} does not train from a feature store; use --online")
    cache = feature_cache if feature_cache is not None else {}
    probe = build_model(method, backbone, num_classes, kwargs, 0).to(device)

    train = shared_store_features(probe, train_store, cache)
    val = shared_store_features(probe, val_store, cache) if val_store is not None else None
    trained = []
    for config in tqdm(configs, desc=f"{method} configs", disable=not progress):
        model = build_model(method, backbone, num_classes, kwargs, config.seed).to(device)
        history = fit_head(model, *train, recipe.replace(lr=config.lr, weight_decay=config.weight_decay,
                                                            seed=config.seed), val)
        failed = _failure(history) if non_finite(history) else None
        trained.append(Trained(config, history, None if failed else model.eval(), failed))
    return trained


def fit_online(
    model: nn.Module,
    dataset: Dataset,
    recipe: Recipe,
    *,
    val_dataset: Dataset | None = None,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    distributed: bool | None = None,
) -> History:
    """Train any method from images (VQT: `train_online`; others: a plain loop with the same recipe).

    bf16: the forward runs under autocast; the logits are cast to fp32 before the loss (as VQT's trainers do).
    `distributed` (None: when a process group of several ranks is initialised; False: this process alone, as the
    sweep's units train): `DistributedDataParallel` over the ranks with the recipe's global batch and order, each
    rank a contiguous slice of every batch (`vqt.training.ddp`), validation sharded.
    """
    if use_ddp(distributed):
        return _fit_online_ddp(model, dataset, recipe, val_dataset=val_dataset, num_workers=num_workers,
                               progress=progress, precision=precision)
    if isinstance(model, VQT):
        return train_online(model, dataset, recipe, val_dataset=val_dataset, num_workers=num_workers,
                            progress=progress, precision=precision)
    device = model.head.weight.device

    def loss_of(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            logits = model(images.to(device))
        return F.cross_entropy(to_master(logits), labels.to(device))

    return fit_epochs(
        model, make_optimizer(model, recipe), recipe, len(dataset),  # type: ignore[arg-type]
        lambda index_batches: image_batches(dataset, index_batches, num_workers),
        loss_of,
        (lambda: evaluate_images([model], val_dataset, precision=precision, distributed=False)[0])
        if val_dataset is not None else None,
        progress=progress,
    )


def _fit_online_ddp(model: nn.Module, dataset: Dataset, recipe: Recipe, *, val_dataset: Dataset | None,
                    num_workers: int, progress: bool, precision: str) -> History:
    """`fit_online` over the ranks: the same loss, recipe and (VQT) seeded query-dropout masks as one process."""
    rank, _ = world()
    if rank:  # adapters' own dropout: a stream of its own per rank (rank 0 keeps the configuration's)
        torch.manual_seed(torch.initial_seed() + 1_000_003 * rank)
    validate = ((lambda: evaluate_images([model], val_dataset, precision=precision, distributed=True)[0])
                if val_dataset is not None else None)
    if isinstance(model, VQT):
        with seeded_query_dropout(model, recipe.seed), seeded_embed_dropout(model, recipe.seed):
            return fit_ddp(model, dataset, recipe, validate=validate, num_workers=num_workers, progress=progress,
                           precision=precision, stop_on_non_finite=False)
    return fit_ddp(model, dataset, recipe, validate=validate, num_workers=num_workers, progress=progress,
                   precision=precision)


def train_online_configs(
    method: str,
    backbone: nn.Module,
    num_classes: int,
    kwargs: dict,
    train_dataset: Dataset,
    configs: Sequence[GridConfig],
    recipe: Recipe,
    *,
    val_dataset: Dataset | None = None,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    distributed: bool | None = None,
) -> list[Trained]:
    """Train every configuration from images, one at a time (`fit_online`); same result type as
    `train_store_configs`.

    Each configuration starts from the pristine `backbone` (`build_model` copies it for every method that changes
    or trains it; `backbone` itself is never modified) and trains under the global RNG seeded from its own seed,
    so its result does not depend on which configurations trained before it (resume computes the same thing).
    """
    device = next(backbone.parameters()).device
    trained = []
    for config in configs:
        model = build_model(method, backbone, num_classes, kwargs, config.seed).to(device)
        config_recipe = recipe.replace(lr=config.lr, weight_decay=config.weight_decay, seed=config.seed)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)  # dropout inside adapters/backbone draws from the global stream
            history = fit_online(model, train_dataset, config_recipe, val_dataset=val_dataset,
                                 num_workers=num_workers, progress=progress, precision=precision,
                                 distributed=distributed)
        failed = _failure(history) if non_finite(history) else None
        trained.append(Trained(config, history, None if failed else model.eval(), failed))
    return trained
