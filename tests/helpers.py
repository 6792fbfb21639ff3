"""Helpers several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from vqt.backbone.sources import create_backbone
from vqt.checkpoint.trained import save_trained
from vqt.data.transforms import describe_transform
from vqt.methods.registry import create_method

SPEC = "vit_tiny_patch16_224@random"
TRANSFORM = describe_transform("official", img_size=32)


def make_trained(directory: Path, method: str, *, seed: int, classes: int = 3, spec: str = SPEC, transform=TRANSFORM,
         img_size: int = 32, **kwargs) -> Path:
    """A saved adapter of `method` with random (non-trivial) trainable weights."""
    torch.manual_seed(seed)
    model = create_method(method, create_backbone(spec, img_size=img_size), classes, **kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    save_trained(model, directory, method=method, kwargs=kwargs, backbone_spec=spec, transform=transform,
                 class_names=[f"{directory.name}-{i}" for i in range(classes)])
    return directory
