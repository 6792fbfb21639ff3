"""Every method of the harness by name: how to build it, whether it trains from a feature store, its size.

`--method NAME` in the CLI resolves here. Store-trainable methods (linear, head2toe, vqt) only read what the
feature store keeps (X_l per block, pre-logits), so their epochs never run the backbone; the feature-adapting ones
(and their VQT combinations) change the tokens and must train online from images. `vqt+X` is defined for every
adapting method X.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vqt.errors import VQTError
from vqt.methods.adaptformer import AdaptFormer
from vqt.methods.base import count_trainable
from vqt.methods.bitfit import BitFit
from vqt.methods.combos import QueryCombo, combo_factory
from vqt.methods.finetune import FineTune
from vqt.methods.head2toe import Head2Toe
from vqt.methods.linear import LinearProbe
from vqt.methods.lora import LoRA
from vqt.methods.vpt import VPT
from vqt.methods.vqt import VQT
from vqt.methods.vqt_concat import ConcatVQT

Builder = Callable[..., nn.Module]
VQT_KWARGS = ("num_queries", "variant", "query_dropout", "form")


@dataclass(frozen=True)
class MethodSpec:
    """A method: its builder `(backbone, num_classes, **kwargs) -> nn.Module` and what kind of training it needs."""

    name: str
    build: Builder
    store_trainable: bool
    adapts_features: bool
    description: str


def _vpt(mode: str) -> Builder:
    def build(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
        return VPT(backbone, num_classes, mode=mode, **kwargs)

    return build


ADAPTERS: dict[str, tuple[Builder, str]] = {
    "finetune": (FineTune, "full fine-tuning of every backbone weight"),
    "bitfit": (BitFit, "bias-only tuning"),
    "vpt-shallow": (_vpt("shallow"), "prompts at the input"),
    "vpt-deep": (_vpt("deep"), "prompts replaced before every block"),
    "lora": (LoRA, "peft LoRA on W_q, W_v (split from timm's fused qkv)"),
    "adaptformer": (AdaptFormer, "parallel bottleneck branch on every MLP"),
}


def _combo(adapter: Builder) -> Builder:
    def build(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
        vqt_kwargs = {k: kwargs.pop(k) for k in VQT_KWARGS if k in kwargs}
        return QueryCombo(backbone, num_classes, combo_factory(adapter, **kwargs), **vqt_kwargs)

    return build


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("linear", LinearProbe, True, False, "Linear head on the pre-logits feature"),
        MethodSpec("head2toe", Head2Toe, True, False, "pooled multi-block features, group-lasso selection"),
        MethodSpec("vqt", VQT, True, False, "Visual Query Tuning (frozen backbone, query path only)"),
        MethodSpec("vqt-concat", ConcatVQT, False, False, "VQT computed the official way (full autograd)"),
        *(MethodSpec(name, build, False, True, text) for name, (build, text) in ADAPTERS.items()),
        *(
            MethodSpec(f"vqt+{name}", _combo(build), False, True, f"VQT queries on the adapted tokens ({text})")
            for name, (build, text) in ADAPTERS.items()
        ),
    )
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
