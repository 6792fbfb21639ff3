"""Fidelity to the official VQT code (andytu28/VQT, inherited from VPT): embedding dropout, input pipelines,
Head2Toe's pooling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tvt
from torchvision.transforms import functional as tvf

from tests.tiny_models import tiny_vit
from vqt.data import transforms as vqt_transforms
from vqt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    describe_transform,
    transform_from_description,
)
from vqt.methods.vqt import VQT

TRANSFORM_NAMES = vqt_transforms.TRANSFORM_NAMES
TFBilinearResize = getattr(vqt_transforms, "TFBilinearResize", None)

# ---------------------------------------------------------------- 1. embedding dropout (online training only)


def _vqt(embed_dropout: bool, backbone=None) -> VQT:
    torch.manual_seed(0)
    return VQT(backbone if backbone is not None else tiny_vit(), num_classes=3, query_dropout=0.0,
               embed_dropout=embed_dropout)


def _block0_input(model: VQT, images: torch.Tensor) -> torch.Tensor:
    """What block 0 receives during one tap pass: the embedded tokens (after any embedding dropout)."""
    seen: list[torch.Tensor] = []
    handle = model.backbone.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model.tap(images)
    finally:
        handle.remove()
    return seen[0]


def test_embed_dropout_applies_in_training_only(one_thread):
    images = torch.randn(2, 3, 32, 32)
    backbone = tiny_vit()
    plain = backbone(images)
    plain_pre = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
    model = _vqt(True, backbone)
    model.train()
    first, second = model.tap(images), model.tap(images)  # the tap runs under no_grad: dropout still applies
    assert not torch.equal(first.pre_logits, second.pre_logits)
    assert not torch.equal(first.tokens[0], second.tokens[0])
    assert not torch.equal(model(images), model(images))
    # the shared backbone is left as it was for its other users
    assert torch.equal(backbone(images), plain)
    assert not backbone.training and not backbone.pos_drop.training and backbone.pos_drop.p == 0.0
    # eval mode: exactly the plain model
    model.eval()
    tapped = model.tap(images)
    assert torch.equal(tapped.pre_logits, plain_pre)
    assert torch.equal(model(images), model(images))


def test_embed_dropout_is_the_official_rate_after_the_position_embedding(one_thread):
    images = torch.randn(8, 3, 32, 32)
    model = _vqt(True)
    backbone = model.backbone
    with torch.no_grad():
        embedded = backbone._pos_embed(backbone.patch_embed(images))  # patch + position embedding, CLS included
    model.eval()
    assert torch.equal(_block0_input(model, images), embedded)
    model.train()
    dropped = _block0_input(model, images)
    zeroed = dropped == 0
    assert abs(float(zeroed.float().mean()) - 0.1) < 0.02
    torch.testing.assert_close(dropped[~zeroed], embedded[~zeroed] / 0.9)


def test_without_embed_dropout_training_tap_equals_eval(one_thread):
    images = torch.randn(2, 3, 32, 32)
    model = _vqt(False)
    model.train()
    train_out = model.tap(images)
    model.eval()
    eval_out = model.tap(images)
    assert torch.equal(train_out.pre_logits, eval_out.pre_logits)
    assert all(torch.equal(a, b) for a, b in zip(train_out.tokens, eval_out.tokens, strict=True))


def test_embed_dropout_online_training_is_seeded_and_store_training_refused(one_thread):
    from torch.utils.data import TensorDataset

    from vqt.errors import VQTError
    from vqt.training.cached import train_cached, train_online
    from vqt.training.recipe import Recipe

    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(6, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2]))
    recipe = Recipe(epochs=2, warmup_epochs=0, batch_size=3, lr=0.5, seed=3)
    trained = []
    for embed_dropout in (True, True, False):
        model = _vqt(embed_dropout, tiny_vit())
        train_online(model, data, recipe)
        trained.append(model.head.weight.detach().clone())
    assert torch.equal(trained[0], trained[1])  # reproducible: the masks come from the recipe's seed
    assert not torch.equal(trained[0], trained[2])  # and they do change training
    with pytest.raises(VQTError, match="online") as info:
        train_cached(_vqt(True), store=None)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    from vqt.training.grid import GridConfig, train_grid

    with pytest.raises(VQTError, match="online"):  # the grid trains from stores too
        train_grid(_vqt(True), store=None, configs=[GridConfig(0.1, 0.0)])  # type: ignore[arg-type]


# ---------------------------------------------------------------- 2. input pipelines: official (TF) and PETL


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


# ---------------------------------------------------------------- 3. Head2Toe's pooling as its official code does it


def _keras_average_pooling_1d(tokens: np.ndarray, pool: int) -> np.ndarray:
    """tf.keras.layers.AveragePooling1D(pool_size=pool, strides=pool) (padding 'valid') then Flatten, in numpy."""
    batch, length, width = tokens.shape
    windows = (length - pool) // pool + 1
    out = np.stack([tokens[:, w * pool : w * pool + pool].mean(axis=1) for w in range(windows)], axis=1)
    return out.reshape(batch, windows * width)


@pytest.mark.parametrize("num_tokens,width,target", [(197, 768, 8192), (197, 3072, 8192), (197, 768, 4096),
                                                     (197, 768, 512), (197, 768, 1024), (17, 48, 200)])
def test_pool_to_target_is_head2toes_flatten_and_concat(num_tokens, width, target):
    from vqt.methods import head2toe

    tokens = torch.randn(2, num_tokens, width, dtype=torch.float64)
    got = head2toe.pool_to_target(tokens, target)
    # google-research/head2toe models/finetune.py, flatten_and_concat, 3-D outputs, cls_token_pool='normal'
    if width >= target:
        expected = tokens.numpy().mean(axis=1)
    else:
        pool = int(num_tokens / (target / width))
        expected = _keras_average_pooling_1d(tokens.numpy(), pool)
    torch.testing.assert_close(got, torch.from_numpy(expected))
    assert got.shape[1] == head2toe.target_feature_width(num_tokens, width, target)


def test_head2toe_paper_pooling_feature_dims_on_vit_b16(one_thread):
    import timm

    from vqt.methods.head2toe import PAPER_SOURCES, Head2Toe

    torch.manual_seed(0)
    backbone = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    image = torch.randn(1, 3, 224, 224)
    # per block at T = 8192: pre_attn, attn, mlp_2 pool 18 of the 197 tokens -> 10 x 768 = 7,680 each;
    # mlp_1 (3,072 wide) pools 73 -> 2 x 3,072 = 6,144. Plus the pre-logits (768).
    paper = Head2Toe(backbone, num_classes=10, sources=PAPER_SOURCES, target_sizes=(8192,))
    assert paper.feature_dim == 768 + 12 * (3 * 7680 + 6144) == 350_976
    assert paper.extract(image).shape == (1, 350_976)
    # T = 512: every source is wider than T, so each is its token mean (768, 768, 3,072, 768)
    small = Head2Toe(backbone, num_classes=10, sources=PAPER_SOURCES, target_sizes=(512,))
    assert small.feature_dim == 768 + 12 * (3 * 768 + 3072) == 65_280
    assert small.extract(image).shape == (1, 65_280)
    # the CPU-sized default is unchanged
    default = Head2Toe(backbone, num_classes=10)
    assert default.feature_dim == 768 + 12 * 2 * 768 == 19_200
    assert default.extract(image).shape == (1, 19_200)
    with pytest.raises(ValueError, match="not both"):
        Head2Toe(backbone, num_classes=10, pool_sizes=(2,), target_sizes=(8192,))
