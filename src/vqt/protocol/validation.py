"""Refusing impossible training settings before any work: one line naming the option (`--lr must be > 0`).

Used by `vqt train` / `vqt sweep` and their Python APIs (`run_train`, `run_sweep`) on the resolved configuration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vqt.errors import VQTError

PRECISION_CHOICES = ("auto", "fp32", "bf16")
STORE_DEVICE_CHOICES = ("auto", "cpu", "cuda")

_INTEGER_AT_LEAST = {"epochs": 1, "batch_size": 1, "eval_every": 1, "seeds": 1, "grid_chunk": 0, "img_size": 1,
                     "num_workers": 0, "extract_batch": 1, "eval_batch": 1, "tuned_layers": 1}
_NUMBER_AT_LEAST = {"lr": (0.0, True), "wd": (0.0, False), "group_lasso": (0.0, False)}  # (bound, strict)
_GRIDS = {"lrs": (0.0, True), "wds": (0.0, False)}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(key: str, value: Any, what: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VQTError(f"invalid training settings: {_flag(key)}{what} must be numbers, got {value!r}" if what else
                       f"invalid training settings: {_flag(key)} must be a number, got {value!r}")
    return float(value)


def _cuda_device(device: Any) -> bool:
    """Whether `--device` names (or `auto` picks) a CUDA device."""
    if device in (None, "auto"):
        import torch

        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def validate_config(config: Mapping[str, Any]) -> None:
    """Refuse impossible settings of a resolved `vqt train` / `vqt sweep` configuration, before any work.

    One `VQTError` naming the option, e.g. "--lr must be > 0, got -1". Only the keys present are checked (None:
    unset, the command's own default applies), so the same function serves both commands and their Python APIs.
    """

    def refuse(text: str) -> None:
        raise VQTError(f"invalid training settings: {text}")

    for key, lowest in _INTEGER_AT_LEAST.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            refuse(f"{_flag(key)} must be an integer, got {value!r}")
        if value < lowest:
            refuse(f"{_flag(key)} must be >= {lowest}, got {value}")
    for key, (bound, strict) in _NUMBER_AT_LEAST.items():
        value = config.get(key)
        if value is None:
            continue
        number = _number(key, value)
        if not (number > bound if strict else number >= bound):
            refuse(f"{_flag(key)} must be {'>' if strict else '>='} {bound:g}, got {_shown(value)}")
        if not math.isfinite(number):
            refuse(f"{_flag(key)} must be finite, got {_shown(value)}")
    for key, (bound, strict) in _GRIDS.items():
        values = config.get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)):
            values = [values]
        if not values:
            refuse(f"{_flag(key)} must list at least one value (e.g. {_flag(key)} 0.1,0.05)")
        for value in values:
            number = _number(key, value, " values")
            if not (number > bound if strict else number >= bound):
                refuse(f"{_flag(key)} values must be {'>' if strict else '>='} {bound:g}, got {_shown(value)}")
            if not math.isfinite(number):
                refuse(f"{_flag(key)} values must be finite, got {_shown(value)}")
    epochs, warmup = config.get("epochs"), config.get("warmup_epochs")
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, int):
            refuse(f"--warmup-epochs must be an integer, got {warmup!r}")
        if warmup < 0 or (epochs is not None and warmup > epochs):
            upper = "" if epochs is None else f" = [0, {epochs}]"
            refuse(f"--warmup-epochs must lie in [0, --epochs]{upper}, got {warmup}")
    for key, choices in (("precision", PRECISION_CHOICES), ("store_device", STORE_DEVICE_CHOICES)):
        value = config.get(key)
        if value is not None and value not in choices:
            refuse(f"{_flag(key)} must be one of {', '.join(choices)}, got {value!r}")
    if config.get("store_device") == "cuda" and not _cuda_device(config.get("device")):
        device = config.get("device") or "auto"
        refuse(f"--store-device cuda needs a CUDA device, but --device {device}"
               + (" found none" if device == "auto" else " is not one"))
    if config.get("tuned_layers") is not None and config.get("method") is not None:
        from vqt.methods.registry import get_method
        from vqt.methods.spec import AdaptConfig

        if get_method(str(config["method"])).config is not AdaptConfig:
            refuse(f"--tuned-layers shrinks an adapting method to its last blocks (vpt-deep, adaptformer, lora, "
                   f"finetune, bitfit); {config['method']!r} has none to shrink")
    dropout = config.get("query_dropout")
    if dropout is not None and not 0.0 <= _number("query_dropout", dropout) < 1.0:
        refuse(f"--query-dropout must lie in [0, 1), got {_shown(dropout)}")
    queries = config.get("queries")
    if queries is not None:
        pairs = queries.items() if isinstance(queries, dict) else [(None, queries)]
        for task, value in pairs:
            if isinstance(value, bool) or not isinstance(value, int):
                refuse(f"--queries must be integers, got {value!r}")
            if value < 1:
                refuse(f"--queries must be >= 1, got {value if task is None else f'{task}={value}'}")
