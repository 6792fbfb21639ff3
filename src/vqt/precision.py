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
HALF_DTYPES = (torch.bfloat16, torch.float16)


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype trained parameters, logits and the loss keep for a backbone in `dtype`: float64 stays float64,
    everything narrower than float32 (bf16, fp16) trains in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_master(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in the master dtype: bf16/fp16 upcast to fp32, float32/float64 left as they are (never a
    hard-coded `.float()`, which would break float64 models)."""
    return tensor.float() if tensor.dtype in HALF_DTYPES else tensor


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
