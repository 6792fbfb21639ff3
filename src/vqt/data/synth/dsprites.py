"""dSprites-like images: one white shape (square, ellipse, heart) on black, of random scale, orientation and position.

Two tasks read different factors of the same generator, the others being distractors:
- ``dsprites_ori``: orientation in 16 bins. A square looks the same every 90° and an ellipse every 180°, so the
  orientation is taken modulo the shape's symmetry period and binned over that period; the label is then a
  function of the image (real dSprites bins over 360° for every shape, which makes part of it unlearnable);
- ``dsprites_loc``: x-position of the shape's centre in 16 bins.
Coordinates are fractions of the image side, so a scene does not depend on the rendered size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

NUM_BINS = 16
SHAPES = ("square", "ellipse", "heart")
SYMMETRY_PERIOD = {"square": math.pi / 2, "ellipse": math.pi, "heart": 2 * math.pi}
SCALE_RANGE = (0.08, 0.17)  # shape "radius" as a fraction of the image side
MARGIN = 0.2  # centre range is [MARGIN, 1 - MARGIN]: every shape stays fully inside the image
SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges
BIN_EDGE_GAP = 0.02  # sampled values keep 2% of a bin width away from its edges: labels are unambiguous


def _unit_outline(shape: str) -> np.ndarray:
    """Outline points of a shape of radius about 1, centred on the origin, y pointing down (image axes)."""
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    t = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    if shape == "ellipse":
        return np.stack([np.cos(t), 0.5 * np.sin(t)], axis=1)
    # heart curve, scaled to about unit radius and centred on its bounding box
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1) / 16.0
    return points - (points.max(axis=0) + points.min(axis=0)) / 2


_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}


def _in_bin(rng: np.random.Generator, label: int, low: float, high: float) -> float:
    width = (high - low) / NUM_BINS
    start = low + width * (label + BIN_EDGE_GAP)
    return float(rng.uniform(start, start + width * (1 - 2 * BIN_EDGE_GAP)))


def sample_params(rng: np.random.Generator, factor: str) -> dict[str, Any]:
    """Draw one scene; the labelled `factor` ('orientation' or 'x') is drawn bin-first so classes are balanced."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    period = SYMMETRY_PERIOD[shape]
    label = int(rng.integers(NUM_BINS))
    scale = float(rng.uniform(*SCALE_RANGE))
    if factor == "orientation":
        angle = _in_bin(rng, label, 0.0, period)
        x = float(rng.uniform(MARGIN, 1 - MARGIN))
    else:
        angle = float(rng.uniform(0.0, period))
        x = _in_bin(rng, label, MARGIN, 1 - MARGIN)
    y = float(rng.uniform(MARGIN, 1 - MARGIN))
    return {"shape": shape, "scale": scale, "angle": angle, "x": x, "y": y}


def orientation_label(params: dict[str, Any]) -> int:
    """Orientation bin, modulo the shape's symmetry period."""
    period = SYMMETRY_PERIOD[params["shape"]]
    return min(int((params["angle"] % period) / period * NUM_BINS), NUM_BINS - 1)


def x_label(params: dict[str, Any]) -> int:
    """Bin of the shape centre's x over the range centres can take."""
    fraction = (params["x"] - MARGIN) / (1 - 2 * MARGIN)
    return min(max(int(fraction * NUM_BINS), 0), NUM_BINS - 1)


def render(params: dict[str, Any], size: int) -> Image.Image:
    """The RGB image of a scene at `size` x `size` pixels."""
    big = size * SUPERSAMPLE
    cos, sin = math.cos(params["angle"]), math.sin(params["angle"])
    rotation = np.array([[cos, -sin], [sin, cos]])
    points = _OUTLINES[params["shape"]] @ rotation.T * params["scale"] + [params["x"], params["y"]]
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([(float(px), float(py)) for px, py in points * big], fill=255)
    return canvas.resize((size, size), Image.Resampling.BOX).convert("RGB")
