"""`vqt viz attention`: maps from the queries' attention (shapes, mass, registers, heads) and the CLI's PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from tests.tiny_models import COMMON, tiny_vit
from vqt.backbone.sources import create_backbone
from vqt.checkpoint.adapter import save_adapter
from vqt.cli.main import main
from vqt.data.transforms import build_transform
from vqt.methods.vqt import VQT
from vqt.viz.attention import (
    TokenLayout,
    attention_maps,
    model_view,
    query_attention_maps,
    reduce_heads,
    split_tokens,
    token_layout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_vqt(backbone, num_queries=1) -> VQT:
    torch.manual_seed(0)
    model = VQT(backbone, num_classes=3, num_queries=num_queries)
    with torch.no_grad():
        for queries in model.queries:
            queries.normal_()  # sharper attention than the small initial queries
    return model.eval()


def test_token_layout_names_prefix_tokens() -> None:
    assert token_layout(tiny_vit("plain_cls")) == TokenLayout(("CLS",), (4, 4))
    assert token_layout(tiny_vit("dinov2_ls_reg")) == TokenLayout(("CLS", "reg1", "reg2"), (4, 4))
    no_cls = VisionTransformer(**{**COMMON, "class_token": False, "reg_tokens": 1, "global_pool": "avg"})
    assert token_layout(no_cls).prefix_names == ("reg1",)
    assert token_layout(no_cls).num_tokens == 17


@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg", "mae_avgpool"])
@pytest.mark.parametrize("num_queries", [1, 3])
def test_maps_one_per_layer_and_patch_mass_is_one_minus_prefix(family: str, num_queries: int) -> None:
    backbone = tiny_vit(family)
    model = trained_vqt(backbone, num_queries)
    images = torch.randn(2, 3, 32, 32)
    layout, maps = query_attention_maps(model, images)
    raw = model.query_attention(images)
    prefix_count = int(backbone.num_prefix_tokens)
    assert layout.num_prefix == prefix_count and layout.grid == (4, 4)
    assert len(maps) == len(backbone.blocks) == 3
    for layer, (m, weights) in enumerate(zip(maps, raw, strict=True)):
        assert m.layer == layer
        assert m.patches.shape == (2, 1, num_queries, 4, 4)
        assert m.prefix.shape == (2, 1, num_queries, prefix_count)
        patch_mass = m.patches.sum(dim=(-2, -1))
        # The patch part sums to the attention mass over the patches, i.e. 1 - the prefix mass.
        torch.testing.assert_close(patch_mass, 1 - m.prefix.sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(patch_mass, weights[..., prefix_count:].sum(-1).mean(1, keepdim=True))
        assert (m.patches >= 0).all() and (m.prefix >= 0).all()


def test_heads_split_and_their_mean_is_the_averaged_map() -> None:
    model = trained_vqt(tiny_vit("dinov2_ls_reg"), 2)
    images = torch.randn(1, 3, 32, 32)
    _, averaged = query_attention_maps(model, images)
    _, split = query_attention_maps(model, images, split_heads=True)
    heads = model.backbone.blocks[0].attn.num_heads
    for mean, per_head in zip(averaged, split, strict=True):
        assert per_head.patches.shape == (1, heads, 2, 4, 4)
        assert per_head.prefix.shape == (1, heads, 2, 3)
        torch.testing.assert_close(per_head.patches.mean(1, keepdim=True), mean.patches)
        torch.testing.assert_close(per_head.patches.sum((-2, -1)) + per_head.prefix.sum(-1),
                                   torch.ones(1, heads, 2), atol=1e-5, rtol=0)


def test_patch_grid_is_row_major_on_non_square_images() -> None:
    layout = TokenLayout(("CLS", "reg1"), (3, 5))
    weights = torch.zeros(1, 2, 1, layout.num_tokens)
    weights[0, 0, 0, 2 + 1 * 5 + 4] = 1.0  # row 1, column 4 in head 0
    weights[0, 1, 0, 1] = 1.0  # reg1 in head 1
    (maps,) = attention_maps([weights], layout)
    assert maps.patches.shape == (1, 1, 1, 3, 5)
    assert maps.patches[0, 0, 0, 1, 4] == 0.5 and maps.patches.sum() == 0.5
    assert maps.prefix[0, 0, 0].tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="3x5 patch grid"):
        split_tokens(torch.zeros(1, 1, 1, 10), layout)
    with pytest.raises(ValueError, match="expected attention weights"):
        reduce_heads(torch.zeros(2, 3))


def test_grid_follows_the_image_for_dynamic_size_models() -> None:
    backbone = VisionTransformer(**{**COMMON, "dynamic_img_size": True}).eval()
    model = trained_vqt(backbone)
    layout, maps = query_attention_maps(model, torch.randn(1, 3, 24, 40))
    assert layout.grid == (3, 5)
    assert maps[0].patches.shape == (1, 1, 1, 3, 5)


def test_model_view_undoes_the_normalisation() -> None:
    transform, description = build_transform("official", img_size=16)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    seen = model_view(transform(Image.fromarray(pixels)), description)
    assert seen.shape == (16, 16, 3)
    np.testing.assert_allclose(seen, pixels / 255.0, atol=1e-5)


def save_random_adapter(tmp_path: Path, spec: str, img_size: int, num_queries: int = 1) -> Path:
    backbone = create_backbone(spec, img_size=img_size)
    model = trained_vqt(backbone, num_queries)
    _, description = build_transform("backbone", backbone)
    return save_adapter(model, tmp_path / "adapter", backbone_spec=spec, transform=description,
                        class_names=["a", "b", "c"])


def write_images(folder: Path, count: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        path = folder / f"img{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_cli_writes_one_png_per_image(tmp_path: Path, capsys) -> None:
    adapter = save_random_adapter(tmp_path, "vit_tiny_patch16_224@random", 32)
    images = write_images(tmp_path / "images")
    out = tmp_path / "viz"
    assert main(["viz", "attention", str(adapter), *map(str, images), "--out", str(out)]) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["img0.attention.png", "img1.attention.png"]
    assert all(p.stat().st_size > 5_000 for p in written)
    assert capsys.readouterr().out.split() == [str(p) for p in written]


def test_cli_rows_per_query_and_per_head_with_registers(tmp_path: Path, monkeypatch) -> None:
    # The tiny DINOv2-like ViT: CLS + 2 registers before a 4x4 grid, 4 heads, 3 layers; loaded by a test spelling.
    import vqt.checkpoint.trained

    monkeypatch.setattr(vqt.checkpoint.trained, "create_backbone",
                        lambda spec, img_size=None: tiny_vit("dinov2_ls_reg"))
    model = trained_vqt(tiny_vit("dinov2_ls_reg"), 2)
    _, description = build_transform("official", img_size=32)
    adapter = save_adapter(model, tmp_path / "adapter", backbone_spec="tiny-reg", transform=description)
    (image,) = write_images(tmp_path / "images", 1)
    sizes = {}
    for name, extra in {"mean": [], "heads": ["--heads"], "one": ["--queries", "1"]}.items():
        out = tmp_path / name
        assert main(["viz", "attention", str(adapter), str(image), "--out", str(out), *extra]) == 0
        sizes[name] = png_size(out / "img0.attention.png")
    # Same width (one column per layer); height grows with the rows: Q=2 rows, 2 x 4 with --heads, 1 with --queries.
    assert sizes["mean"][0] == sizes["heads"][0] == sizes["one"][0]
    assert sizes["one"][1] < sizes["mean"][1] < sizes["heads"][1]


def test_draw_rows_and_panels() -> None:
    from vqt.viz.figure import ViewedImage, draw_attention

    model = trained_vqt(tiny_vit("dinov2_ls_reg"), [1, 2, 2])
    images = torch.randn(1, 3, 32, 32)
    layout, maps = query_attention_maps(model, images, split_heads=True)
    figure = draw_attention(ViewedImage("x", np.zeros((32, 32, 3))), layout, maps, scale="image")
    heads, queries, layers = 4, 2, 3
    rows = heads * queries
    drawn = [axis for axis in figure.axes if axis.images]
    # Per row: the input and a map per layer (its prefix bar drawn under it); layer 0 has a single query, so the
    # second query's rows have no layer-0 panel. Plus one colorbar.
    assert len(drawn) == rows + rows * layers - heads
    assert len(figure.axes) == len(drawn) + 1
    assert sum(len(axis.patches) for axis in drawn) == (rows * layers - heads) * (1 + 3)  # patches, CLS, 2 registers
    # Wrapped two layers per line: two lines per query (input + layers 0-1, input + layer 2).
    _, averaged = query_attention_maps(model, images)
    figure = draw_attention(ViewedImage("x", np.zeros((32, 32, 3))), layout, averaged, columns=2)
    assert len(figure.axes) == 4 + (2 + 1 + 1 + 1) + 1
    titles = [axis.get_title() for axis in figure.axes if axis.get_title().startswith("layer")]
    assert [title.split(",")[0] for title in titles] == ["layer 0", "layer 1", "layer 2"]


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp: tmp / "missing.png", "no such image or folder: .*missing.png"),
    (lambda tmp: (tmp / "broken.png").write_bytes(b"not a png") and tmp / "broken.png",
     "broken.png: not a readable image"),
])
def test_bad_image_is_one_line_exit_2(tmp_path: Path, capsys, make_bad, message: str) -> None:
    adapter = save_random_adapter(tmp_path, "vit_tiny_patch16_224@random", 32)
    (good,) = write_images(tmp_path / "images", 1)
    bad = make_bad(tmp_path)
    assert main(["viz", "attention", str(adapter), str(good), str(bad), "--out", str(tmp_path / "viz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("vqt: error: ")
    import re

    assert re.search(message, error)
    assert not (tmp_path / "viz").exists()  # nothing drawn before every image was read


def test_not_an_adapter_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    (image,) = write_images(tmp_path / "images", 1)
    for folder in (tmp_path / "images", tmp_path / "nowhere", image):
        assert main(["viz", "attention", str(folder), str(image), "--out", str(tmp_path / "viz")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "no adapter at" in error and str(folder) in error


def test_query_out_of_range_is_a_user_error(tmp_path: Path, capsys) -> None:
    adapter = save_random_adapter(tmp_path, "vit_tiny_patch16_224@random", 32)
    (image,) = write_images(tmp_path / "images", 1)
    assert main(["viz", "attention", str(adapter), str(image), "--out", str(tmp_path / "v"), "--queries", "3"]) == 2
    assert "no query 3: the adapter has Q=1" in capsys.readouterr().err
