"""Methods as the protocol trains them: build, train a list of configurations, compress, save and load.

VQT trains with the library's trainers (`train_grid` from a store, `train_online` from images). Linear probing and
Head2Toe only train a head on features that do not change, so their features are read from the store once and
the head is trained with the same recipe (Adam, coupled decay, warm-up + cosine per epoch, same batch order).
Feature-adapting methods train online with a plain loop. Any configuration whose loss becomes NaN/inf is stopped
and marked failed; the others go on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqt.adapters import (
    CONFIG_NAME,
    check_backbone,
    library_version,
    load_adapter,
    save_adapter,
)
from vqt.backbone.sources import create_backbone, describe, weights_fingerprint
from vqt.errors import AdapterError, VQTError
from vqt.features import FeatureStore
from vqt.io import write_atomic
from vqt.methods.feature_selection import SelectedHead, select_and_refit
from vqt.methods.registry import create_method, get_method
from vqt.methods.vqt import VQT
from vqt.training import GridConfig, History, Recipe, seed_init, train_grid, train_online
from vqt.training.cached import fit_epochs, image_batches, store_batches, tap_to
from vqt.training.recipe import make_optimizer

log = logging.getLogger("vqt.protocol")

TRAINED_CONFIG = "trained_config.json"
TRAINED_WEIGHTS = "trained.safetensors"
HEAD_METHODS = ("linear", "head2toe")


def method_kwargs(method: str, *, queries: int, variant: str = "concat", query_dropout: float = 0.1) -> dict:
    """The builder keyword arguments the protocol passes for `method` (Q only for the query methods)."""
    if method == "vqt" or method.startswith("vqt"):
        return {"num_queries": int(queries), "variant": variant, "query_dropout": float(query_dropout)}
    return {}


def build_model(method: str, backbone: nn.Module, num_classes: int, kwargs: dict, seed: int) -> nn.Module:
    """A fresh model of `method` initialised from `seed` (VQT: exactly as `train_grid` initialises it)."""
    spec = get_method(method)
    if spec.adapts_features or not spec.store_trainable:
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


@torch.no_grad()
def store_features(model: nn.Module, store: FeatureStore, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input for every image of a store (eval mode: no query dropout), and the labels."""
    model.eval()
    device = model.head.weight.device
    order = [np.arange(s, min(s + batch_size, len(store))) for s in range(0, len(store), batch_size)]
    features, labels = [], []
    for tapped, batch_labels in store_batches(store, order):
        features.append(model.features_from(tap_to(tapped, device)).float())
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels).to(device)


@torch.no_grad()
def evaluate_store_models(models: Sequence[nn.Module], store: FeatureStore) -> list[float]:
    """Accuracy of store-trainable models on a split's feature store (no backbone pass)."""
    accuracies = []
    for model in models:
        features, labels = store_features(model, store)
        accuracies.append(float((model.head(features).argmax(-1) == labels).double().mean()))
    return accuracies


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
) -> list[Trained]:
    """Train every configuration from the store. VQT: one `train_grid` pass; head methods: fixed features."""
    device = next(backbone.parameters()).device
    if method == "vqt":
        template = build_model(method, backbone, num_classes, kwargs, 0).to(device)
        result = train_grid(template, train_store, configs, recipe, val_store=val_store, progress=progress)
        trained = []
        for index, (config, history) in enumerate(zip(result.configs, result.histories, strict=True)):
            if non_finite(history):
                trained.append(Trained(config, history, None, _failure(history)))
            else:
                trained.append(Trained(config, history, result.model(index)))
        return trained
    if method not in HEAD_METHODS:
        raise VQTError(f"method {method!r} does not train from a feature store; use --online")
    cache = feature_cache if feature_cache is not None else {}
    probe = build_model(method, backbone, num_classes, kwargs, 0).to(device)

    def features(store: FeatureStore) -> tuple[torch.Tensor, torch.Tensor]:
        key = (method, str(store.path))
        if key not in cache:
            cache[key] = store_features(probe, store)
        return cache[key]

    train = features(train_store)
    val = features(val_store) if val_store is not None else None
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
) -> History:
    """Train any method from images (VQT: `train_online`; others: a plain loop with the same recipe)."""
    if isinstance(model, VQT):
        return train_online(model, dataset, recipe, val_dataset=val_dataset, num_workers=num_workers,
                            progress=progress)
    device = model.head.weight.device
    return fit_epochs(
        model, make_optimizer(model, recipe), recipe, len(dataset),  # type: ignore[arg-type]
        lambda index_batches: image_batches(dataset, index_batches, num_workers),
        lambda images, labels: F.cross_entropy(model(images.to(device)), labels.to(device)),
        (lambda: evaluate_images([model], val_dataset)[0]) if val_dataset is not None else None,
        progress=progress,
    )


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
                                 num_workers=num_workers, progress=progress)
        failed = _failure(history) if non_finite(history) else None
        trained.append(Trained(config, history, None if failed else model.eval(), failed))
    return trained


@torch.no_grad()
def evaluate_images(
    models: Sequence[nn.Module], dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0,
    progress: bool = False,
) -> list[float]:
    """Accuracy of each model on a dataset of (image, label). Store methods share one backbone pass per batch."""
    from vqt.training import evaluate_streaming

    if all(hasattr(m, "tap") and hasattr(m, "features_from") for m in models):
        return evaluate_streaming(list(models), dataset, batch_size=batch_size, num_workers=num_workers,
                                  progress=progress).accuracies
    correct = [0] * len(models)
    count = 0
    for model in models:
        model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, labels in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        for index, model in enumerate(models):
            device = model.head.weight.device
            correct[index] += int((model(images.to(device)).argmax(-1).cpu() == labels).sum())
        count += len(labels)
    return [c / max(1, count) for c in correct]


def compress(
    model: nn.Module,
    train_store: FeatureStore,
    *,
    keep_fraction: float,
    lr: float,
    weight_decay: float,
    epochs: int,
    group_lasso: float = 1e-4,
    seed: int = 0,
) -> nn.Module:
    """docs/design.md §2 compression: queries frozen, a group-lasso head ranks the features, a fresh head on the kept.

    `lr` is the effective lr of the chosen configuration; the group-lasso selection head and the fresh head on the
    kept features both train at half of it (the reference notes give the half for the selection; the fresh head's
    rate is not stated there, and this keeps the one rate the selection used).
    """
    features, labels = store_features(model, train_store)
    head = select_and_refit(
        features, labels, model.head.out_features if isinstance(model.head, nn.Linear) else model.head.linear.out_features,
        keep_fraction=keep_fraction, group_lasso=group_lasso, epochs=epochs, lr=lr / 2,
        weight_decay=weight_decay, seed=seed,
    )
    compressed = copy.copy(model)
    compressed._modules = dict(model._modules)
    compressed.head = head.to(features.device)
    return compressed.eval()


# ---------------------------------------------------------------- saving and loading


def save_trained(
    model: nn.Module,
    directory: str | Path,
    *,
    method: str,
    kwargs: dict,
    backbone_spec: str,
    transform: dict | None,
    class_names: list[str] | None,
    extra: dict | None = None,
) -> Path:
    """Save what trained. A plain VQT becomes a standard adapter (`vqt.adapters`); any other method, or a
    compressed head, a `trained_config.json` + `trained.safetensors` pair with the same checks on load."""
    directory = Path(directory)
    extra = {"method": method, **(extra or {})}
    if isinstance(model, VQT) and isinstance(model.head, nn.Linear):
        return save_adapter(model, directory, backbone_spec=backbone_spec, transform=transform,
                            class_names=class_names, extra=extra)
    backbone = model.backbone
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    tensors.update({name: b.detach().cpu().contiguous() for name, b in model.named_buffers() if name.startswith("head.")})
    weights = st_save(tensors)
    head = model.head
    num_classes = head.out_features if isinstance(head, nn.Linear) else head.linear.out_features
    config = {
        "format": "vqt-trained",
        "format_version": 1,
        "library_version": library_version(),
        "method": method,
        "method_kwargs": kwargs,
        "backbone": backbone_spec,
        "architecture": describe(backbone),
        "weights_fingerprint": weights_fingerprint_of(method, model),
        "img_size": describe(backbone)["img_size"],
        "transform": transform,
        "num_classes": num_classes,
        "class_names": class_names,
        "selected_head": isinstance(head, SelectedHead),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **extra,
    }
    write_atomic(directory / TRAINED_WEIGHTS, weights)
    write_atomic(directory / TRAINED_CONFIG, json.dumps(config, indent=2).encode())
    return directory


def weights_fingerprint_of(method: str, model: nn.Module) -> str | None:
    """The frozen backbone's fingerprint; None for methods that change backbone weights (nothing to compare)."""
    if get_method(method).adapts_features:
        return None
    return weights_fingerprint(model.backbone)


def read_trained_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    for name in (CONFIG_NAME, TRAINED_CONFIG):
        if (directory / name).is_file():
            try:
                config = json.loads((directory / name).read_text())
            except ValueError as error:
                raise AdapterError(f"corrupt {directory / name}: {error}") from error
            config.setdefault("method", "vqt")
            return config
    raise AdapterError(f"no adapter at {directory}: neither {CONFIG_NAME} nor {TRAINED_CONFIG} found")


def load_trained(directory: str | Path, backbone: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load what `save_trained` wrote: (model in eval mode, its config). `hf-hub:OWNER/NAME[@REV]` is downloaded."""
    from vqt.hub import local_folder

    directory = local_folder(directory)
    if backbone is None:
        config = read_trained_config(directory)
        if "backbone" not in config:
            raise AdapterError(f"{directory}: the adapter config names no backbone")
        backbone = create_backbone(config["backbone"], img_size=config.get("img_size"))
    if (directory / CONFIG_NAME).is_file():
        model = load_adapter(directory, backbone)
        return model, read_trained_config(directory)
    config = read_trained_config(directory)
    data = (directory / TRAINED_WEIGHTS).read_bytes() if (directory / TRAINED_WEIGHTS).is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != config.get("weights_sha256"):
        raise AdapterError(f"adapter weights in {directory} are missing or corrupt (checksum mismatch)")
    tensors = st_load(data)
    check_backbone({**config, "weights_fingerprint": config.get("weights_fingerprint")}, backbone,
                   check_weights=config.get("weights_fingerprint") is not None)
    with torch.random.fork_rng(devices=[]):
        model = create_method(config["method"], backbone, config["num_classes"], **config["method_kwargs"])
    if config.get("selected_head"):
        model.head = SelectedHead(tensors["head.indices"], config["num_classes"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise AdapterError(f"adapter tensors do not fit the model: unexpected {unexpected[:4]}")
    return model.eval(), config


def evaluate_fn(models: Sequence[nn.Module]) -> Callable[[Dataset], list[float]]:
    return lambda dataset: evaluate_images(models, dataset)
