"""Transforms: the official protocol matches a hand computation exactly; descriptions are JSON and rebuild."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as tvt
from torchvision.transforms import functional as tvf

from vqt.data import transforms as vqt_transforms
from vqt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    describe_transform,
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
    (its reference: the TF-kernel tests in this file)."""
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


TRANSFORM_NAMES = vqt_transforms.TRANSFORM_NAMES


TFBilinearResize = getattr(vqt_transforms, "TFBilinearResize", None)


def _tf_bilinear_reference(image: np.ndarray, out_h: int, out_w: int, half_pixel_centers: bool) -> np.ndarray:
    """TensorFlow's bilinear resize kernel (resize_bilinear_op.cc), written out in float32 with numpy.

    Per axis: scale = in / out; the source coordinate is out * scale (legacy, `tf.compat.v1.image.resize`, what
    the official VPT/VQT code calls) or (out + 0.5) * scale - 0.5 (half-pixel centres, TF2's `tf.image.resize`);
    lower = max(floor, 0), upper = min(ceil, in - 1), lerp = src - floor; no antialiasing. The output is the
    float interpolation of the uint8 values (TF does not round back to uint8).
    """

    def axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = np.float32(in_size) / np.float32(out_size)
        index = np.arange(out_size, dtype=np.float32)
        src = (index + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel_centers else index * scale
        floor = np.floor(src)
        lower = np.maximum(floor, 0).astype(np.int64)
        upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
        return lower, upper, (src - floor).astype(np.float32)

    pixels = image.astype(np.float32)
    ys_lower, ys_upper, ys_lerp = axis(pixels.shape[0], out_h)
    xs_lower, xs_upper, xs_lerp = axis(pixels.shape[1], out_w)
    out = np.empty((out_h, out_w, pixels.shape[2]), dtype=np.float32)
    for y in range(out_h):
        for x in range(out_w):
            top_left, top_right = pixels[ys_lower[y], xs_lower[x]], pixels[ys_lower[y], xs_upper[x]]
            bottom_left, bottom_right = pixels[ys_upper[y], xs_lower[x]], pixels[ys_upper[y], xs_upper[x]]
            top = top_left + (top_right - top_left) * xs_lerp[x]
            bottom = bottom_left + (bottom_right - bottom_left) * xs_lerp[x]
            out[y, x] = top + (bottom - top) * ys_lerp[y]
    return out


def _normalised(resized: np.ndarray) -> torch.Tensor:
    """The official code's tail: /255 (preprocess_fn), then (x - mean) / std (to_torch_imgs), channels first."""
    scaled = resized / np.float32(255.0)
    chw = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))
    return (chw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _random_image(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height * 1000 + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


SHAPES = [(37, 53, 24, 24), (50, 30, 17, 23), (300, 500, 224, 224), (10, 7, 31, 20), (16, 16, 16, 16)]


@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SHAPES)  # enlarging, shrinking, mixed, non-square, identity
@pytest.mark.parametrize("half_pixel_centers", [False, True])
def test_tf_bilinear_resize_matches_the_kernel(in_h, in_w, out_h, out_w, half_pixel_centers):
    image = _random_image(in_h, in_w)
    resize = TFBilinearResize((out_h, out_w), half_pixel_centers=half_pixel_centers)
    got = resize(image) * 255.0  # it returns the resized values / 255, as the official preprocess_fn
    assert got.shape == (3, out_h, out_w) and got.dtype == torch.float32
    expected = _tf_bilinear_reference(np.asarray(image), out_h, out_w, half_pixel_centers)
    torch.testing.assert_close(got, torch.from_numpy(expected.transpose(2, 0, 1)), rtol=0, atol=1e-4)
    if half_pixel_centers:  # TF2's half-pixel form is torch's bilinear without antialiasing
        pixels = torch.from_numpy(np.asarray(image).astype(np.float32)).permute(2, 0, 1)
        tv = tvf.resize(pixels, [out_h, out_w], interpolation=tvf.InterpolationMode.BILINEAR, antialias=False)
        torch.testing.assert_close(got, tv, rtol=0, atol=1e-2)  # torch rounds its weights differently


@pytest.mark.parametrize("in_h,in_w", [(37, 53), (500, 300), (224, 224)])
def test_official_transform_is_the_official_codes_tf_pipeline(in_h, in_w):
    image = _random_image(in_h, in_w)
    transform, description = build_transform("official")
    out = transform(image)
    assert out.shape == (3, 224, 224)
    expected = _normalised(_tf_bilinear_reference(np.asarray(image), 224, 224, half_pixel_centers=False))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # not PIL's (antialiasing) bilinear any more when shrinking
    if in_h > 224:
        pil = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
        assert (out - _normalised(pil)).abs().max() > 0.05
    assert description["resize"] == "tf-bilinear" and description["interpolation"] == "bilinear"
    assert description["crop"] is None and description["mean"] == list(IMAGENET_MEAN)
    rebuilt = transform_from_description(json.loads(json.dumps(description)))
    assert torch.equal(rebuilt(image), out)


def test_petl_transform_is_bicubic_resize_to_224_without_crop():
    image = _random_image(300, 500)
    transform, description = build_transform("petl")
    assert description == {
        "name": "petl",
        "size": [224, 224],
        "interpolation": "bicubic",
        "resize": "pil",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "crop": None,
        "train": None,
    }
    # NOAH's pipeline (lib/datasets.py, --direct_resize): Resize((224, 224), interpolation=3), ToTensor, Normalize
    reference = tvt.Compose([tvt.Resize((224, 224), interpolation=tvt.InterpolationMode.BICUBIC), tvt.ToTensor(),
                             tvt.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(transform(image), reference(image))
    rebuilt = transform_from_description(json.loads(json.dumps(description)))
    assert torch.equal(rebuilt(image), reference(image))


def test_descriptions_recorded_before_the_tf_pipeline_still_rebuild_their_pil_pipeline():
    image = _random_image(300, 500)
    old = {"name": "official", "size": [224, 224], "interpolation": "bilinear", "mean": list(IMAGENET_MEAN),
           "std": list(IMAGENET_STD), "crop": None, "train": None}  # what stores/adapters recorded until now
    pil = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
    torch.testing.assert_close(transform_from_description(old)(image), _normalised(pil), rtol=0, atol=1e-6)
    assert describe_transform("official") != old  # so a store extracted the old way is not silently reused


def test_transform_choices_offer_every_named_pipeline():
    from vqt.cli import extract, sweep, train

    for module in (extract, sweep, train):
        option = next(o for o in module.OPTIONS if o.flag == "--transform")
        assert tuple(option.choices) == TRANSFORM_NAMES == ("backbone", "official", "petl")
