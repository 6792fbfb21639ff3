"""Image transforms, each with a small JSON-able description recorded in run metadata and feature stores.

The normalisation and the resize move VTAB-1k results by whole points (tens on CIFAR-100 in some codebases), so
a run must say which it used. Three named choices:
- ``backbone`` (default): the backbone's own pretrained data config as timm resolves it (input size,
  interpolation, mean/std, resize + centre crop);
- ``official``: the official VQT code's pipeline (inherited from VPT: ``tf.image.resize`` of
  ``tensorflow.compat.v1``, then /255 and ImageNet mean/std): TensorFlow's bilinear resize straight to size×size
  (224), no crop, *no antialiasing*, with TF1's legacy source coordinates (out · in/out, not half-pixel centres),
  on the float pixel values (`TFBilinearResize`);
- ``petl``: the pipeline of the PETL code bases that read the community VTAB-1k image lists (NOAH, and those
  built on it): PIL bicubic resize straight to 224×224 (``Resize((224, 224), interpolation=3)``), no crop,
  ToTensor, ImageNet mean/std.
``train=True`` adds augmentation for online training on larger datasets: random resized crop + horizontal flip
(the VTAB-1k protocol itself uses none). A description rebuilds its transform exactly
(`transform_from_description`); its ``resize`` field names the resize ("tf-bilinear", "tf-bilinear-half-pixel"
or "pil"; descriptions recorded before the field existed mean "pil").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from timm.data import create_transform, resolve_data_config, resolve_model_data_config
from torch import nn
from torchvision import transforms as tvt

from vqt.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_SIZE = 224
PETL_SIZE = 224
TRANSFORM_NAMES = ("backbone", "official", "petl")
RESIZES = ("pil", "tf-bilinear", "tf-bilinear-half-pixel")
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
    `img_size` overrides the input size; by default ``backbone`` uses the size the model was built for,
    ``official`` and ``petl`` use 224.
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
            "resize": "tf-bilinear",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "crop": None,
        }
    elif name == "petl":
        size = _pair(img_size if img_size is not None else PETL_SIZE)
        description = {
            "name": "petl",
            "size": list(size),
            "interpolation": "bicubic",
            "resize": "pil",
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
        resize = str(description.get("resize", "pil"))
        if resize not in RESIZES:
            raise ValueError(f"unknown resize {resize!r}")
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"invalid transform description {dict(description)!r}: {error}") from error
    normalise = [tvt.ToTensor(), tvt.Normalize(mean, std)]
    if resize != "pil" and not train:
        if crop is not None or interpolation != tvt.InterpolationMode.BILINEAR:
            raise DataError(f"invalid transform description {dict(description)!r}: {resize} is a bilinear resize "
                            "without crop")
        tf_resize = TFBilinearResize((height, width), half_pixel_centers=resize == "tf-bilinear-half-pixel")
        return tvt.Compose([tf_resize, tvt.Normalize(mean, std)])
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


class TFBilinearResize:
    """TensorFlow's bilinear resize without antialiasing, on an RGB PIL image (or an H×W×C uint8 array).

    Returns the float32 (C, H, W) tensor of the interpolated values divided by 255, as the official code's
    ``preprocess_fn`` does (``tf.image.resize`` gives floats, not rounded back to uint8; then ``/ 255.0``).
    It follows TF's kernel (resize_bilinear_op.cc) step by step in float32: per axis scale = in / out, source
    coordinate out · scale (TF1's legacy ``resize_images``, ``half_pixel_centers=False``: what
    ``tensorflow.compat.v1.image.resize`` runs, and the official VPT/VQT code imports ``tensorflow.compat.v1``)
    or (out + 0.5) · scale − 0.5 with ``half_pixel_centers=True`` (TF2's ``tf.image.resize``); lower =
    max(floor, 0), upper = min(ceil, in − 1); top/bottom lerped along x first, then along y.
    """

    def __init__(self, size: tuple[int, int], half_pixel_centers: bool = False) -> None:
        self.size = _pair(size)
        self.half_pixel_centers = bool(half_pixel_centers)

    def _axis(self, in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = np.float32(in_size) / np.float32(out_size)
        index = np.arange(out_size, dtype=np.float32)
        half = np.float32(0.5)
        source = (index + half) * scale - half if self.half_pixel_centers else index * scale
        floor = np.floor(source)
        lower = np.maximum(floor, 0).astype(np.int64)
        upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
        lerp = (source - floor).astype(np.float32)
        return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(lerp)

    def __call__(self, image: Any) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))  # (H, W, C) uint8 values
        if pixels.ndim == 2:
            pixels = pixels.unsqueeze(-1)
        out_h, out_w = self.size
        ys_lower, ys_upper, ys_lerp = self._axis(pixels.shape[0], out_h)
        xs_lower, xs_upper, xs_lerp = self._axis(pixels.shape[1], out_w)
        top, bottom = pixels[ys_lower], pixels[ys_upper]  # (out_h, W, C)
        x_lerp = xs_lerp.view(1, -1, 1)
        top = top[:, xs_lower] + (top[:, xs_upper] - top[:, xs_lower]) * x_lerp
        bottom = bottom[:, xs_lower] + (bottom[:, xs_upper] - bottom[:, xs_lower]) * x_lerp
        resized = top + (bottom - top) * ys_lerp.view(-1, 1, 1)
        return (resized / np.float32(255.0)).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, half_pixel_centers={self.half_pixel_centers})"


def _data_config(model: nn.Module | Mapping[str, Any] | None) -> dict[str, Any]:
    if model is None:
        raise DataError("the 'backbone' transform needs the model (or its data config); or choose 'official' or "
                        "'petl'")
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
