"""Every method of the harness by name: each module's `SPEC` (how to build it, how it trains, its grid), one line
each.

`--method NAME` in the CLI resolves here. Store-trainable methods (linear, head2toe, vqt) only read what the
feature store keeps (X_l per block, pre-logits), so their epochs never run the backbone; the feature-adapting ones
(and their VQT combinations) change the tokens and must train online from images. `vqt+X` is defined for every
adapting method X.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from vqt.errors import VQTError
from vqt.methods import adaptformer, bitfit, finetune, head2toe, linear, lora, vpt, vqt, vqt_concat
from vqt.methods.base import count_trainable
from vqt.methods.combos import combo_spec
from vqt.methods.spec import MethodGrid, MethodSpec

# The methods that adapt the backbone's tokens; `vqt+X` is defined for each.
ADAPTING: tuple[MethodSpec, ...] = (finetune.SPEC, bitfit.SPEC, vpt.SPEC_SHALLOW, vpt.SPEC_DEEP, lora.SPEC,
                                    adaptformer.SPEC)

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (linear.SPEC, head2toe.SPEC, vqt.SPEC, vqt_concat.SPEC, *ADAPTING, *map(combo_spec, ADAPTING))
}


def method_names() -> list[str]:
    """Every name `create_method` accepts, in the registry's order (linear, head2toe, vqt, ..., vqt+X)."""
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of `name`; an unknown name raises `VQTError` with the closest spellings."""
    key = name.strip().lower()
    if key not in METHODS:
        close = difflib.get_close_matches(key, METHODS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise VQTError(f"unknown method {name!r}{hint} (known: {', '.join(METHODS)})")
    return METHODS[key]


def create_method(name: str, backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build method `name` on `backbone` (modified in place for adapting methods: pass a fresh copy)."""
    return get_method(name).build(backbone, num_classes, **kwargs)


def trainable_parameter_count(model: nn.Module) -> int:
    """Scalars that train (head included), shared parameters counted once."""
    return count_trainable(model)


def is_store_trainable(name: str) -> bool:
    return get_method(name).store_trainable


def method_grid(name: str) -> MethodGrid:
    """The default lr x weight-decay grid of `name` for `vqt sweep` (used when no `--lrs` / `--wds` is given)."""
    return get_method(name).grid
