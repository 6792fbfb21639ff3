"""The VTAB-1k protocol behind `vqt train` and `vqt sweep`, usable from Python (`run_train`, `run_sweep`).

The grid on train800 judged on val200, the chosen configuration on train800val200 with N seeds, tested at the
last epoch (docs/design.md §2). This package module imports nothing at import time: its modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"run_train": "vqt.protocol.train_run", "TRAIN_DEFAULTS": "vqt.protocol.train_run",
            "run_sweep": "vqt.protocol.sweep", "Sweep": "vqt.protocol.sweep", "SWEEP_DEFAULTS": "vqt.protocol.sweep"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """`from vqt.protocol import run_sweep` loads the sweep on first use (PEP 562), not on `import vqt.protocol`."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqt.protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
