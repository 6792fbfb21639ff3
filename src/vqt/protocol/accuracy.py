"""Accuracy of trained models: from a feature store (no backbone pass) or from images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vqt.features import FeatureStore
from vqt.precision import autocast, to_master
from vqt.training.feeding import feed_batches, sequential_batches


@torch.no_grad()
def store_features(model: nn.Module, store: FeatureStore, batch_size: int = 256, precision: str = "fp32"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input for every image of a store (eval mode: no query dropout), and the labels.

    `precision` 'bf16' computes them under autocast (as a bf16 run trains); they are returned in fp32."""
    model.eval()
    device = model.head.weight.device
    features, labels = [], []
    for tapped, batch_labels in feed_batches(store, sequential_batches(len(store), batch_size), device):
        with autocast(precision, device):
            batch_features = model.features_from(tapped)
        features.append(to_master(batch_features))
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels).to(device)


def shared_store_features(model: nn.Module, store: FeatureStore, cache: dict | None, precision: str = "fp32"
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`store_features`, computed once per store for every model whose features do not train.

    Linear probing and Head2Toe read the same frozen features whatever their head: their `feature_key()` names
    what the features depend on (backbone, sources, pooling), so the seeds of one run, its compressed heads and the
    grid share one pass over the store. Head2Toe's "attn" source reruns every block's attention on the stored
    tokens, as costly as a backbone pass, so computing it per model made its sweep several times slower than
    VQT's. Models without a `feature_key` (VQT: the queries train) are computed every time."""
    key_of = getattr(model, "feature_key", None)
    if cache is None or key_of is None:
        return store_features(model, store, precision=precision)
    key = (str(store.path), precision, key_of())
    if key not in cache:
        cache[key] = store_features(model, store, precision=precision)
    return cache[key]


@torch.no_grad()
def evaluate_store_models(models: Sequence[nn.Module], store: FeatureStore, precision: str = "fp32",
                          cache: dict | None = None) -> list[float]:
    """Accuracy of store-trainable models on a split's feature store (no backbone pass); models with the same
    frozen features share one computation of them (`shared_store_features`; `cache` keeps them across calls)."""
    cache = {} if cache is None else cache
    accuracies = []
    for model in models:
        features, labels = shared_store_features(model, store, cache, precision=precision)
        accuracies.append(float((model.head(features).argmax(-1) == labels).double().mean()))
    return accuracies


@torch.no_grad()
def evaluate_images(
    models: Sequence[nn.Module], dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0,
    progress: bool = False, precision: str = "fp32", distributed: bool | None = None,
) -> list[float]:
    """Accuracy of each model on a dataset of (image, label). Store methods share one backbone pass per batch.

    `precision` 'bf16' runs the forward passes under autocast, as a bf16 run trains. `distributed` (None: when a
    process group of several ranks is initialised; the sweep passes False, its ranks evaluate different units):
    each rank evaluates its contiguous shard and the correct counts are all-reduced, so every rank returns the
    accuracies over the whole dataset."""
    from vqt.distributed.context import all_reduce_sum, use_ddp, world
    from vqt.distributed.shards import shard
    from vqt.training import evaluate_streaming

    if use_ddp(distributed):
        part = shard(len(dataset), *world())  # type: ignore[arg-type]
        accuracies = evaluate_images(models, Subset(dataset, part), batch_size=batch_size, num_workers=num_workers,
                                     progress=progress, precision=precision, distributed=False)
        counts = all_reduce_sum([round(a * len(part)) for a in accuracies] + [len(part)],
                                models[0].head.weight.device)
        return [c / max(1.0, counts[-1]) for c in counts[:-1]]

    if all(hasattr(m, "tap") and hasattr(m, "features_from") for m in models):
        return evaluate_streaming(list(models), dataset, batch_size=batch_size, num_workers=num_workers,
                                  progress=progress, precision=precision).accuracies
    correct = [0] * len(models)
    count = 0
    for model in models:
        model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, labels in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        for index, model in enumerate(models):
            device = model.head.weight.device
            with autocast(precision, device):
                logits = model(images.to(device))
            correct[index] += int((logits.argmax(-1).cpu() == labels).sum())
        count += len(labels)
    return [c / max(1, count) for c in correct]



def evaluate_fn(models: Sequence[nn.Module]) -> Callable[[Dataset], list[float]]:
    return lambda dataset: evaluate_images(models, dataset)
