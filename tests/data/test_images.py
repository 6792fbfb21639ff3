"""Every image mode becomes correct 8-bit RGB; broken files are DataErrors naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqt.data.images import open_rgb, to_rgb
from vqt.errors import DataError


def _saved(tmp_path: Path, image: Image.Image, name: str, **save_args) -> Path:
    path = tmp_path / name
    image.save(path, **save_args)
    return path


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grey_l(tmp_path: Path) -> None:
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    out = _pixels(open_rgb(_saved(tmp_path, Image.fromarray(grey, "L"), "g.png")))
    assert (out == grey[..., None]).all()


def test_grey_alpha_la_composited_on_black(tmp_path: Path) -> None:
    la = Image.merge("LA", [Image.new("L", (2, 1), 200), Image.frombytes("L", (2, 1), bytes([255, 0]))])
    out = _pixels(open_rgb(_saved(tmp_path, la, "la.png")))
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [0, 0, 0]


def test_rgba_premultiplied(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 255], [0, 255, 0, 0], [100, 200, 50, 128]]], dtype=np.uint8)
    out = _pixels(open_rgb(_saved(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 0, 0]  # hidden colour under full transparency does not leak
    assert out[0, 2].tolist() == [50, 100, 25]


def test_palette_opaque_and_with_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    plain = _pixels(open_rgb(_saved(tmp_path, palette, "p.png")))
    assert plain.tolist() == [[[255, 0, 0], [0, 0, 255]]]
    transparent = _pixels(open_rgb(_saved(tmp_path, palette, "pt.png", transparency=1)))
    assert transparent.tolist() == [[[255, 0, 0], [0, 0, 0]]]
    gif = _pixels(open_rgb(_saved(tmp_path, palette, "pt.gif", transparency=0)))
    assert gif.tolist() == [[[0, 0, 0], [0, 0, 255]]]


def test_16bit_grey_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _saved(tmp_path, Image.fromarray(values), "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16") or raw.mode == "I"
    out = _pixels(open_rgb(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32bit_integer_and_float_modes() -> None:
    as_16bit = to_rgb(Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I"))
    assert np.asarray(as_16bit)[0, :, 0].tolist() == [0, 255]
    stretched = to_rgb(Image.fromarray(np.array([[-100, 0, 100, 300]], dtype=np.int32), "I"))
    assert np.asarray(stretched)[0, :, 0].tolist() == [0, 64, 128, 255]
    unit = to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F"))
    assert np.asarray(unit)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink-wise
    out = _pixels(open_rgb(_saved(tmp_path, cmyk, "c.jpg", quality=100)))
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 3


def test_exif_rotation_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image, left half white
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _saved(tmp_path, Image.fromarray(pixels), "rot.jpg", exif=exif, quality=95)
    out = _pixels(open_rgb(path))
    assert out.shape == (40, 20, 3)  # displayed upright: tall
    assert out[:15].mean() > 200 and out[-15:].mean() < 50  # the white half is now on top


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=r"train800\.txt:7: .*cut\.jpg: corrupt or truncated image"):
        open_rgb(truncated, where="train800.txt:7")
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png, "PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.getvalue()[:60])
    with pytest.raises(DataError, match=r"cut\.png"):
        open_rgb(cut_png)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not an image")
    with pytest.raises(DataError, match=r"garbage\.png: not a readable image"):
        open_rgb(garbage)
    with pytest.raises(DataError, match=r"absent\.png: image file not found"):
        open_rgb(tmp_path / "absent.png")
