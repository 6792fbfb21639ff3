"""Compute precision: `--precision {auto,fp32,bf16}` resolved for a device, and the autocast context it means.

bf16 runs the backbone and the query path under `torch.autocast` (bf16 matmuls), while parameters, optimiser
state, the head's logits and the loss stay fp32. `auto` is bf16 on a CUDA device that supports it and fp32
everywhere else (the CPU default stays fp32: CPU bf16 autocast works but is rarely faster there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vqt.errors import VQTError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`fp32` or `bf16` for `precision` on `device`; a clear error for anything else."""
    if precision not in PRECISIONS:
        raise VQTError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VQTError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """`torch.autocast` to bf16 when `precision` is `bf16` (resolved), a no-op for `fp32`."""
    device = torch.device(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
