"""Image transforms, each with a small JSON-able description recorded in run metadata and feature stores.

The normalisation moves VTAB-1k results by whole points (tens on CIFAR-100 in some codebases), so a run must
say which it used. Two named choices:
- ``backbone`` (default): the backbone's own pretrained data config as timm resolves it (input size,
  interpolation, mean/std, resize + centre crop);
- ``official``: the official VQT/VTAB-1k protocol — PIL bilinear resize straight to size×size (224), no crop,
  /255, ImageNet mean/std.
``train=True`` adds augmentation for online training on larger datasets: random resized crop + horizontal flip
(the VTAB-1k protocol itself uses none). A description rebuilds its transform exactly
(`transform_from_description`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from timm.data import create_transform, resolve_data_config, resolve_model_data_config
from torch import nn
from torchvision import transforms as tvt

from vqt.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_SIZE = 224
TRANSFORM_NAMES = ("backbone", "official")
TRAIN_SCALE = (0.08, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def build_transform(
    name: str = "backbone",
    model: nn.Module | Mapping[str, Any] | None = None,
    img_size: int | tuple[int, int] | None = None,
    train: bool = False,
) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """Return ``(transform, description)`` for a named choice.

    `model` (a timm model, or a timm data-config / pretrained-config dict) is needed for ``backbone``.
    `img_size` overrides the input size; by default ``backbone`` uses the size the model was built for and
    ``official`` uses 224.
    """
    description = describe_transform(name, model, img_size, train)
    return transform_from_description(description), description


def describe_transform(
    name: str = "backbone",
    model: nn.Module | Mapping[str, Any] | None = None,
    img_size: int | tuple[int, int] | None = None,
    train: bool = False,
) -> dict[str, Any]:
    """The JSON-able description `build_transform` would return, without building anything."""
    if name == "official":
        size = _pair(img_size if img_size is not None else OFFICIAL_SIZE)
        description: dict[str, Any] = {
            "name": "official",
            "size": list(size),
            "interpolation": "bilinear",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "crop": None,
        }
    elif name == "backbone":
        config = _data_config(model)
        if img_size is None:
            img_size = _model_input_size(model) or tuple(int(v) for v in config["input_size"][-2:])
        size = _pair(img_size)
        crop_pct = config.get("crop_pct")
        description = {
            "name": "backbone",
            "size": list(size),
            "interpolation": str(config.get("interpolation", "bicubic")),
            "mean": [float(v) for v in config["mean"]],
            "std": [float(v) for v in config["std"]],
            "crop": {
                "mode": str(config.get("crop_mode") or "center"),
                "pct": float(crop_pct) if crop_pct is not None else 1.0,
            },
        }
    else:
        raise DataError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORM_NAMES)}")
    description["train"] = None
    if train:
        description["train"] = {
            "random_resized_crop": {"scale": list(TRAIN_SCALE), "ratio": list(TRAIN_RATIO)},
            "hflip": 0.5,
        }
    return description


def transform_from_description(description: Mapping[str, Any]) -> Callable[[Any], Any]:
    """Rebuild the transform a description stands for (e.g. one read back from a feature store)."""
    try:
        height, width = (int(v) for v in description["size"])
        interpolation = tvt.InterpolationMode(description["interpolation"])
        mean, std = tuple(description["mean"]), tuple(description["std"])
        crop = description.get("crop")
        train = description.get("train")
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"invalid transform description {dict(description)!r}: {error}") from error
    normalise = [tvt.ToTensor(), tvt.Normalize(mean, std)]
    if train:
        resized_crop = train["random_resized_crop"]
        return tvt.Compose(
            [
                tvt.RandomResizedCrop(
                    (height, width),
                    scale=tuple(resized_crop["scale"]),
                    ratio=tuple(resized_crop["ratio"]),
                    interpolation=interpolation,
                ),
                tvt.RandomHorizontalFlip(float(train["hflip"])),
                *normalise,
            ]
        )
    if crop is None:
        return tvt.Compose([tvt.Resize((height, width), interpolation=interpolation), *normalise])
    return create_transform(
        input_size=(3, height, width),
        is_training=False,
        interpolation=description["interpolation"],
        mean=mean,
        std=std,
        crop_pct=float(crop["pct"]),
        crop_mode=str(crop["mode"]),
    )


def _data_config(model: nn.Module | Mapping[str, Any] | None) -> dict[str, Any]:
    if model is None:
        raise DataError("the 'backbone' transform needs the model (or its data config); or choose 'official'")
    if isinstance(model, nn.Module):
        return resolve_model_data_config(model)
    return resolve_data_config(pretrained_cfg=dict(model))


def _model_input_size(model: nn.Module | Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The size a ViT was built for (``img_size=...`` at creation), which its pretrained config does not track."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size is None or getattr(patch_embed, "dynamic_img_size", False):
        return None
    height, width = (int(v) for v in size)
    return height, width


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        if size < 1:
            raise DataError(f"image size must be positive, got {size}")
        return size, size
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise DataError(f"image size must be positive, got {size}")
    return height, width
