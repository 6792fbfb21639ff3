"""Streaming evaluation: test images go once through the backbone, with several trained query sets attached.

Test splits can be far larger than training splits (73,728 images for dSprites), so they are not worth a store.
Each batch runs the frozen backbone once (`BackboneTap`); every attached model (e.g. the 5 seeds of the chosen
configuration) then runs only its cheap query path and head on that one tap output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vqt.methods.vqt import VQT
from vqt.precision import autocast
from vqt.training.feeding import AnyStore, feed_batches, place_store, sequential_batches
from vqt.training.loop import model_device


@dataclass
class EvalResult:
    """Per attached model: accuracy and predicted class of every image (dataset order); true labels."""

    accuracies: list[float]
    predictions: torch.Tensor  # (M, num_images) int64
    labels: torch.Tensor  # (num_images,) int64

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std_accuracy(self) -> float:
        return float(torch.tensor(self.accuracies, dtype=torch.float64).std(unbiased=False))


def _check_shared_backbone(models: Sequence[VQT]) -> None:
    """Models must read the same backbone, or sharing its forward would be wrong."""
    first = models[0].backbone
    for index, model in enumerate(models[1:], start=1):
        if model.backbone is first:
            continue
        ours, theirs = first.state_dict(), model.backbone.state_dict()
        same = ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        if not same:
            raise ValueError(f"model {index} has a different backbone from model 0; evaluate them separately")


@torch.no_grad()
def evaluate_streaming(
    models: VQT | Sequence[VQT],
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> EvalResult:
    """Accuracy and predictions of one or several trained VQTs over `dataset` with one backbone pass per batch.

    `dataset` yields (image tensor, label). The models are put in eval mode; the first one's tap is used.
    `precision` 'bf16' runs the backbone pass and the query paths under autocast; the heads compute in fp32.
    """
    models = [models] if isinstance(models, VQT) else list(models)
    if not models:
        raise ValueError("no models to evaluate")
    _check_shared_backbone(models)
    tap = models[0].tap
    device = torch.device(device) if device is not None else models[0].head.weight.device
    for model in models:
        model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    predictions: list[list[torch.Tensor]] = [[] for _ in models]
    labels: list[torch.Tensor] = []
    for images, batch_labels in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        with autocast(precision, device):
            tapped = tap(images.to(device, non_blocking=True))
        for index, model in enumerate(models):
            with autocast(precision, device):
                features = model.features_from(tapped)
            logits = model.head(features.to(model.head.weight.dtype))
            predictions[index].append(logits.argmax(-1))
        labels.append(torch.as_tensor(batch_labels).to(torch.int64))
    all_labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)
    stacked = torch.stack([torch.cat(p).cpu() if p else torch.empty(0, dtype=torch.int64) for p in predictions])
    accuracies = [float((row == all_labels).double().mean()) if len(all_labels) else 0.0 for row in stacked]
    return EvalResult(accuracies=accuracies, predictions=stacked, labels=all_labels)


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
    device = model_device(models[0])
    store = place_store(store, store_device, device)
    correct = [torch.zeros((), dtype=torch.int64, device=model_device(model)) for model in models]
    for tapped, labels in feed_batches(store, sequential_batches(len(store), batch_size), device):
        for index, model in enumerate(models):
            with autocast(precision, device):
                features = model.features_from(tapped.to(model_device(model)))
            logits = model.head(features.to(model.head.weight.dtype))
            correct[index] += (logits.argmax(-1) == labels.to(logits.device)).sum()
    return [int(c) / max(1, len(store)) for c in correct]
