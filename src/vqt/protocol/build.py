"""Building a method's model and its training recipe the way the protocol does (seeded, user errors named)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from vqt.errors import VQTError
from vqt.methods.registry import create_method, get_method
from vqt.methods.vqt import VQT
from vqt.training import Recipe, seed_init

HEAD_METHODS = ("linear", "head2toe")


def method_kwargs(method: str, *, queries: int, variant: str = "concat", query_dropout: float = 0.1) -> dict:
    """The builder keyword arguments the protocol passes for `method` (Q only for the query methods)."""
    if method == "vqt" or method.startswith("vqt"):
        return {"num_queries": int(queries), "variant": variant, "query_dropout": float(query_dropout)}
    return {}


def build_model(method: str, backbone: nn.Module, num_classes: int, kwargs: dict, seed: int) -> nn.Module:
    """A fresh model of `method` initialised from `seed` (VQT: exactly as `train_grid` initialises it)."""
    spec = get_method(method)
    if spec.adapts_features or not spec.store_trainable:
        backbone = copy.deepcopy(backbone)  # adapting methods change the backbone in place
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_method(method, backbone, num_classes, **kwargs)
    if isinstance(model, VQT):
        seed_init(model, seed)
    return model


def make_recipe(**fields: Any) -> Recipe:
    """A `Recipe`, with inconsistent settings (e.g. more warm-up than epochs) reported as user errors."""
    try:
        return Recipe(**fields)
    except ValueError as error:
        raise VQTError(f"invalid training settings: {error}") from error
