"""Transforms: the official protocol matches a hand computation exactly; descriptions are JSON and rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vqt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    transform_from_description,
)
from vqt.errors import DataError


def _reference_official(image: Image.Image, size: int = 224) -> torch.Tensor:
    """PIL bilinear resize straight to size x size, /255, ImageNet mean/std, channels first."""
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    scaled = resized / np.float32(255.0)
    normalised = (scaled - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(
        IMAGENET_STD, dtype=np.float32
    )
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())


@pytest.mark.parametrize("shape", [(37, 53), (224, 224), (500, 300)])
def test_pil_description_matches_reference_exactly(shape: tuple[int, int]) -> None:
    """A description without "resize" (as recorded before the TF pipeline) is PIL's; 'official' is TF's now
    (its reference: tests/test_fidelity.py)."""
    rng = np.random.default_rng(sum(shape))
    image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), "RGB")
    legacy = {"name": "official", "size": [224, 224], "interpolation": "bilinear", "mean": list(IMAGENET_MEAN),
              "std": list(IMAGENET_STD), "crop": None, "train": None}
    out = transform_from_description(legacy)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, _reference_official(image))
    assert build_transform("official")[1] == {**legacy, "resize": "tf-bilinear"}


def test_official_other_size() -> None:
    image = Image.new("RGB", (40, 30), (200, 10, 90))
    transform, description = build_transform("official", img_size=96)
    assert torch.equal(transform(image), _reference_official(image, 96))
    assert description["size"] == [96, 96]


def test_backbone_transform_follows_pretrained_config() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=1)
    transform, description = build_transform("backbone", model)
    config = model.pretrained_cfg
    assert description["name"] == "backbone"
    assert description["size"] == [64, 64]
    assert description["interpolation"] == config["interpolation"]
    assert description["mean"] == list(config["mean"]) and description["std"] == list(config["std"])
    assert description["crop"] == {"mode": config.get("crop_mode", "center"), "pct": config["crop_pct"]}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    assert transform(image).shape == (3, 64, 64)
    assert build_transform("backbone", model, img_size=48)[1]["size"] == [48, 48]


def test_description_is_json_and_rebuilds_the_same_transform() -> None:
    config = {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 0.875,
    }
    transform, description = build_transform("backbone", config)
    rebuilt = transform_from_description(json.loads(json.dumps(description)))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 41, 3), dtype=np.uint8))
    assert torch.equal(transform(image), rebuilt(image))
    official, official_description = build_transform("official", img_size=32)
    assert torch.equal(
        official(image), transform_from_description(json.loads(json.dumps(official_description)))(image)
    )


def test_train_augmentation_is_random_and_described() -> None:
    transform, description = build_transform("official", img_size=32, train=True)
    assert description["train"]["hflip"] == 0.5
    assert description["train"]["random_resized_crop"]["scale"] == [0.08, 1.0]
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)


def test_unknown_transform_and_missing_model() -> None:
    with pytest.raises(DataError, match="unknown transform 'imagenet'"):
        build_transform("imagenet")
    with pytest.raises(DataError, match="needs the model"):
        build_transform("backbone")
