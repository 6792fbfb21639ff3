"""Open any image file as 8-bit RGB, the same way everywhere.

`PIL.Image.convert("RGB")` is not enough on its own: it clips 16-bit grey to white, drops alpha without
compositing (so whatever colour hides under transparent pixels leaks into the features) and ignores the EXIF
orientation of camera JPEGs. Every loader of the package goes through `open_rgb` instead.

Conventions (recorded here because they change pixel values):
- transparency (LA, RGBA, PA, P with a transparency entry, ...) is composited on **black**, i.e. the colour is
  multiplied by alpha (premultiplied alpha): a fully transparent pixel carries no signal;
- 16-bit grey (I;16*) is scaled to 8 bits with rounding, ``v * 255 / 65535``;
- 32-bit integer grey (I) is taken as 16-bit data when it lies in [0, 65535] (how 16-bit PNG/TIFF decode),
  otherwise stretched min..max to 0..255;
- float grey (F) is taken as [0, 1] data when it lies there, otherwise stretched min..max;
- EXIF orientation is applied (`ImageOps.exif_transpose`) before anything else.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vqt.errors import DataError

# Extensions ImageFolder-style scans accept (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_UINT16_MAX = 65535


def open_rgb(path: str | os.PathLike[str] | BinaryIO, where: str = "", name: str | None = None) -> Image.Image:
    """Decode `path` (or an open binary file) fully and return it as an 8-bit RGB image; any decoding problem is
    a `DataError`.

    `where` names the list file and line the path came from, so the message points at what to fix; `name` is
    what the message calls the image (default: the path).
    """
    label = name or str(path)
    label = f"{where}: {label}" if where else label
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) on some broken EXIF blocks; those images are still usable.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as image:
                image.load()  # force the full decode here, so truncation is caught now
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except FileNotFoundError as error:
        raise DataError(f"{label}: image file not found") from error
    except UnidentifiedImageError as error:
        raise DataError(f"{label}: not a readable image (unknown or corrupt format)") from error
    except Image.DecompressionBombError as error:
        raise DataError(f"{label}: image too large to decode safely ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{label}: corrupt or truncated image ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB (see the module notes for the conventions)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        return _composite_on_black(image.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _composite_on_black(image.convert("RGBA"))
    if mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.uint32)  # handles I;16, I;16B, I;16L byte orders
        return _grey_to_rgb(_scale_16bit(grey))
    if mode == "I":
        grey = np.asarray(image, dtype=np.int64)
        if grey.size and grey.min() >= 0 and grey.max() <= _UINT16_MAX:
            return _grey_to_rgb(_scale_16bit(grey))
        return _grey_to_rgb(_stretch(grey.astype(np.float64)))
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        grey = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)
        if grey.size and grey.min() >= 0.0 and grey.max() <= 1.0:
            return _grey_to_rgb(np.rint(grey * 255.0).astype(np.uint8))
        return _grey_to_rgb(_stretch(grey))
    if mode == "1":
        return image.convert("L").convert("RGB")
    try:
        # L, P (opaque), CMYK, YCbCr, LAB, HSV: PIL's own conversion is the correct one.
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB") from error


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """Premultiply colour by alpha (composite on black), in integer arithmetic with rounding."""
    pixels = np.asarray(rgba, dtype=np.uint32)
    colour, alpha = pixels[..., :3], pixels[..., 3:4]
    out = (colour * alpha + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _scale_16bit(grey: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with rounding (65535 -> 255, 32768 -> 128), never clipping."""
    grey = grey.astype(np.uint64)
    return ((grey * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def _stretch(grey: np.ndarray) -> np.ndarray:
    """Stretch an arbitrary range to 0..255 (a constant image becomes black)."""
    low, high = float(grey.min(initial=0.0)), float(grey.max(initial=0.0))
    if high <= low:
        return np.zeros(grey.shape, dtype=np.uint8)
    return np.rint((grey - low) * 255.0 / (high - low)).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file name has one of the image extensions folder scans accept."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
