"""The run setup `vqt train` and `vqt sweep` share: the device and precision, the backbone and its evaluation
transform, Q per task, the selection rule on val200 and the per-epoch records of metrics.jsonl."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vqt.backbone.sources import create_backbone, describe
from vqt.data.tasks import TaskSpec
from vqt.data.transforms import build_transform
from vqt.distributed.context import rank_device
from vqt.errors import VQTError
from vqt.precision import resolve_precision
from vqt.protocol.fitting import Trained


def resolve_device(name: str | None) -> torch.device:
    """What --device means for this process (under torchrun: this rank's GPU, `vqt.distributed.context`)."""
    return rank_device(name)


def resolve_compute(config: dict[str, Any]) -> torch.device:
    """The run's device; `config["precision"]` resolved for it once per run (config.yaml records the result)."""
    device = resolve_device(config["device"])
    config["precision"] = resolve_precision(config["precision"], device)
    return device


@dataclass
class RunBackbone:
    """The frozen backbone a run trains on, at its resolution, with the evaluation transform and its description."""

    backbone: nn.Module
    img_size: int
    transform: Any
    description: dict[str, Any]


def load_backbone(config: Mapping[str, Any], device: torch.device) -> RunBackbone:
    """`--backbone` at `--img-size` on `device`, and the `--transform` built for it (`--tuned-layers` checked
    against its depth)."""
    backbone = create_backbone(config["backbone"], img_size=config["img_size"]).to(device)
    tuned = config.get("tuned_layers")
    if tuned is not None and tuned > len(backbone.blocks):
        raise VQTError(f"invalid training settings: --tuned-layers {tuned} is more than the {len(backbone.blocks)} "
                       f"blocks of {config['backbone']}")
    size = describe(backbone)["img_size"]
    transform, description = build_transform(config["transform"], backbone, img_size=size)
    return RunBackbone(backbone, size, transform, description)


def task_queries(option: int | Mapping[str, int] | None, task: TaskSpec) -> int:
    """Q for `task`: `--queries N` for every task, `name=N,...` per task, else the task registry's Q."""
    if isinstance(option, Mapping):
        return int(option.get(task.name, task.default_queries))
    return int(option) if option is not None else task.default_queries


def choose(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Best last-epoch val200 accuracy; ties -> the smaller lr, then the smaller weight decay."""
    return max(results, key=lambda r: (r["val_accuracy"], -r["lr"], -r["weight_decay"]))


def epoch_records(trained: Trained, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One metrics.jsonl record per epoch of a trained configuration (`base` says which unit it is)."""
    h = trained.history
    return [
        {**base, "epoch": epoch + 1, "lr_value": h.lr[epoch], "train_loss": h.train_loss[epoch],
         "val_accuracy": h.val_accuracy[epoch] if epoch < len(h.val_accuracy) else None}
        for epoch in range(len(h.train_loss))
    ]
