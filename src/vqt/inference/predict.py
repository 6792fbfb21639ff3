"""Using a trained adapter: accuracy on a split (`vqt eval`) and top-k class names for images (`vqt predict`).

Images are read and normalised exactly as in training: the transform description recorded in the adapter is
rebuilt (`transform_from_description`), without the training augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vqt.data.images import IMAGE_EXTENSIONS, open_rgb
from vqt.data.tasks import check_data_root, make_dataset, read_split, resolve_task_list
from vqt.data.transforms import transform_from_description
from vqt.errors import DataError, VQTError
from vqt.hub.fetch import load_trained
from vqt.precision import autocast, resolve_precision, to_master
from vqt.protocol.accuracy import evaluate_images


def inference_transform(config: dict[str, Any]):
    description = config.get("transform")
    if not description:
        raise VQTError("the adapter records no input transform; it cannot be used on images")
    return transform_from_description({**description, "train": None})


def evaluate_adapter(adapter: str | Path, data_root: str | Path, task: str, split: str = "test", *,
                     batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                     precision: str = "fp32") -> dict[str, Any]:
    """Accuracy of a saved adapter on one split of a task; `precision` as `--precision` (auto, fp32, bf16)."""
    model, config = load_trained(adapter)
    precision = resolve_precision(precision, model.head.weight.device)
    spec = resolve_task_list(task, data_root)[0]
    check_data_root(data_root, [spec], (split,))
    images = read_split(data_root, spec.name, split)
    if images.num_classes != config["num_classes"]:
        raise VQTError(f"the adapter has {config['num_classes']} classes but {spec.name} has {images.num_classes}")
    dataset = make_dataset(images, inference_transform(config))
    accuracy = evaluate_images([model], dataset, batch_size=batch_size, num_workers=num_workers,
                               progress=progress, precision=precision)[0]
    return {"adapter": str(adapter), "task": spec.name, "split": split, "images": len(images), "accuracy": accuracy}


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, _, files in os.walk(path):
                found.extend(Path(dirpath) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"no such image or folder: {path}")
    if not found:
        raise DataError(f"no images found in {', '.join(str(p) for p in paths)}")
    return sorted(dict.fromkeys(found))


@torch.no_grad()
def predict(adapter: str | Path, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 32,
            precision: str = "fp32") -> list[dict[str, Any]]:
    """Top-k (class name, probability) for each image: [{"path", "predictions": [{"class", "index", "score"}]}].

    `precision` as `--precision`: bf16 runs the forward under autocast; the probabilities are in fp32 (or fp64)."""
    model, config = load_trained(adapter)
    transform = inference_transform(config)
    names = config.get("class_names") or [str(i) for i in range(config["num_classes"])]
    files = collect_images(paths)
    device = model.head.weight.device
    precision = resolve_precision(precision, device)
    k = max(1, min(int(top_k), len(names)))
    results = []
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        images = torch.stack([transform(open_rgb(path)) for path in batch]).to(device)
        with autocast(precision, device):
            logits = model(images)
        probabilities = to_master(logits).softmax(-1)
        scores, indices = probabilities.topk(k, dim=-1)
        for path, row_scores, row_indices in zip(batch, scores.tolist(), indices.tolist(), strict=True):
            results.append({"path": str(path), "predictions": [
                {"class": names[i], "index": i, "score": s} for s, i in zip(row_scores, row_indices, strict=True)]})
    return results
