"""CLEVR-like scenes: coloured spheres, cubes and cylinders standing on a shaded floor, seen in perspective.

A pinhole camera at height 1 looks at a flat floor; an object of world radius R at depth z and lateral
position x stands on the floor at screen ``y = horizon + F / z`` with screen radius ``F * R / z``
(fractions of the image side). Colour, material, size, shape, floor and wall tone, horizon height and light
direction vary freely: they are the distractors. Two tasks:
- ``clevr_count``: 3..10 objects -> label ``count - 3`` (8 classes);
- ``clevr_dist``: depth of the nearest object, in 6 bins equally spaced in log-depth (equal steps of apparent
  size), with 2..7 objects in the scene.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

FOCAL = 1.5  # F: screen fraction per world unit at depth 1 (camera height 1)
DEPTH_RANGE = (2.5, 10.0)
COUNT_DEPTH_RANGE = (
    3.5,
    10.0,
)  # counting keeps objects a little smaller, so 10 fit without hiding each other
COUNT_RANGE = (3, 10)
DIST_OBJECTS = (2, 7)
DIST_BINS = 6
SIZES = {"small": 0.22, "large": 0.36}
SHAPES = ("sphere", "cube", "cylinder")
COLOURS = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SCREEN_MARGIN = 0.02
MIN_SEPARATION = 0.8  # screen centres at least 0.8 * (r1 + r2) apart: any occlusion stays partial
SUPERSAMPLE = 2
BIN_EDGE_GAP = 0.02


def dist_label(params: dict[str, Any]) -> int:
    """Bin of the nearest object's depth, bins equal in log-depth over DEPTH_RANGE."""
    near, far = DEPTH_RANGE
    nearest = min(obj["z"] for obj in params["objects"])
    fraction = math.log(nearest / near) / math.log(far / near)
    return min(max(int(fraction * DIST_BINS), 0), DIST_BINS - 1)


def count_label(params: dict[str, Any]) -> int:
    return len(params["objects"]) - COUNT_RANGE[0]


def _screen(obj: dict[str, Any]) -> tuple[float, float, float]:
    """Screen centre x, floor contact y and radius of an object, as fractions of the image side."""
    radius = FOCAL * obj["R"] / obj["z"]
    return 0.5 + FOCAL * obj["x"] / obj["z"], FOCAL / obj["z"], radius


def _new_object(rng: np.random.Generator, depth: float) -> dict[str, Any]:
    size = "large" if rng.random() < 0.5 else "small"
    colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    jitter = rng.integers(-15, 16, size=3)
    colour = [
        min(max(int(c + j), 0), 255) for c, j in zip(COLOURS[colour_name], jitter.tolist(), strict=True)
    ]
    world_radius = SIZES[size] * float(rng.uniform(0.9, 1.1))
    margin = FOCAL * world_radius / depth + SCREEN_MARGIN  # the whole object stays inside the image
    screen_x = float(rng.uniform(margin, 1 - margin))
    return {
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": colour_name,
        "rgb": colour,
        "size": size,
        "R": world_radius,
        "metal": bool(rng.random() < 0.4),
        "x": (screen_x - 0.5) * depth / FOCAL,
        "z": depth,
    }


def _fits(candidate: dict[str, Any], placed: list[dict[str, Any]]) -> bool:
    cx, cy, cr = _screen(candidate)
    cy -= cr
    for other in placed:
        ox, oy, orad = _screen(other)
        oy -= orad
        if math.hypot(cx - ox, cy - oy) < MIN_SEPARATION * (cr + orad):
            return False
    return True


def _place(rng: np.random.Generator, depths: list[float]) -> list[dict[str, Any]] | None:
    placed: list[dict[str, Any]] = []
    for depth in depths:
        for _ in range(60):
            candidate = _new_object(rng, depth)
            if _fits(candidate, placed):
                placed.append(candidate)
                break
        else:
            return None
    return placed


def _scene(rng: np.random.Generator) -> dict[str, Any]:
    floor = int(rng.integers(95, 165))
    tint = rng.integers(-12, 13, size=3)
    return {
        "horizon": float(rng.uniform(0.26, 0.36)),
        "light": float(rng.uniform(-1.0, 1.0)),
        "floor": [int(np.clip(floor + t, 0, 255)) for t in tint],
        "wall": [int(np.clip(floor + 25 + t, 0, 255)) for t in rng.integers(-20, 21, size=3)],
    }


def sample_params(rng: np.random.Generator, task: str) -> dict[str, Any]:
    """Draw one scene for 'count' or 'dist'; the label is drawn first (and kept through placement retries), so
    classes are balanced."""
    scene = _scene(rng)
    if task == "count":
        count = int(rng.integers(COUNT_RANGE[0], COUNT_RANGE[1] + 1))
    else:
        label = int(rng.integers(DIST_BINS))
        count = int(rng.integers(DIST_OBJECTS[0], DIST_OBJECTS[1] + 1))
    for _ in range(1000):
        if task == "count":
            depths = sorted(rng.uniform(*COUNT_DEPTH_RANGE, size=count).tolist())
        else:
            near, far = DEPTH_RANGE
            step = math.log(far / near) / DIST_BINS
            low = math.log(near) + step * (label + BIN_EDGE_GAP)
            nearest = math.exp(rng.uniform(low, low + step * (1 - 2 * BIN_EDGE_GAP)))
            others = rng.uniform(min(nearest * 1.08, far), far, size=count - 1).tolist()
            depths = [nearest, *sorted(others)]
        objects = _place(rng, depths)
        if objects is not None:
            return {**scene, "objects": objects}
    raise RuntimeError(f"could not place {count} objects without hiding one another")  # a bug, not user input


def render(params: dict[str, Any], size: int) -> Image.Image:
    """The RGB image of a scene at `size` x `size` pixels (drawn at 2x, box-filtered down)."""
    big = size * SUPERSAMPLE
    image = _background(params, big)
    draw = ImageDraw.Draw(image)
    horizon, light = params["horizon"], params["light"]
    far_to_near = sorted(params["objects"], key=lambda obj: -obj["z"])
    floor = np.array(params["floor"], dtype=np.float64)
    for obj in far_to_near:  # shadows first: they lie on the floor, under every object
        x, ground, radius = _screen(obj)
        cx, cy, r = x * big, (horizon + ground) * big, radius * big
        shadow = _rgb(floor * 0.55)
        draw.ellipse(
            [cx - r * 1.1 + light * r * 0.7, cy - r * 0.3, cx + r * 1.1 + light * r * 0.7, cy + r * 0.3],
            fill=shadow,
        )
    for obj in far_to_near:
        x, ground, radius = _screen(obj)
        _draw_object(draw, obj, x * big, (horizon + ground) * big, radius * big, light)
    return image.resize((size, size), Image.Resampling.BOX)


def _background(params: dict[str, Any], big: int) -> Image.Image:
    """Wall above the horizon, floor below, both with a soft vertical gradient."""
    rows = (np.arange(big, dtype=np.float64) + 0.5) / big
    horizon = params["horizon"]
    wall, floor = np.array(params["wall"], np.float64), np.array(params["floor"], np.float64)
    wall_shade = 0.8 + 0.2 * np.clip(rows / horizon, 0, 1)
    floor_shade = 1.05 - 0.35 * np.clip((rows - horizon) / (1 - horizon), 0, 1)
    column = np.where((rows < horizon)[:, None], wall_shade[:, None] * wall, floor_shade[:, None] * floor)
    strip = Image.fromarray(np.clip(column, 0, 255).astype(np.uint8)[:, None, :], "RGB")
    return strip.resize((big, big), Image.Resampling.NEAREST)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in np.clip(np.rint(colour), 0, 255))
    return red, green, blue


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: dict[str, Any], cx: float, ground: float, r: float, light: float
) -> None:
    base = np.array(obj["rgb"], dtype=np.float64)
    if obj["shape"] == "sphere":
        cy = ground - r
        steps = 10
        for k in range(steps):  # concentric discs drifting toward the light: cheap smooth shading
            rk = r * (1 - k / steps)
            shift = (r - rk) * 0.45
            ox, oy = cx + shift * light, cy - shift * 0.8
            draw.ellipse([ox - rk, oy - rk, ox + rk, oy + rk], fill=_rgb(base * (0.45 + 0.6 * k / steps)))
        if obj["metal"]:
            hr = r * 0.18
            hx, hy = cx + r * 0.4 * light, cy - r * 0.45
            draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(245, 245, 245))
    elif obj["shape"] == "cube":
        half = r * 0.8
        depth = half * 0.6
        top, left, right = ground - 2 * half, cx - half, cx + half
        lit = 0.75 + 0.15 * light
        draw.polygon(
            [
                (left, top),
                (right, top),
                (right + depth * 0.6, top - depth),
                (left + depth * 0.6, top - depth),
            ],
            fill=_rgb(base * 1.05),
        )
        draw.polygon(
            [
                (right, top),
                (right + depth * 0.6, top - depth),
                (right + depth * 0.6, ground - depth),
                (right, ground),
            ],
            fill=_rgb(base * (0.5 + 0.1 * light)),
        )
        draw.rectangle([left, top, right, ground], fill=_rgb(base * lit))
        if obj["metal"]:
            draw.line(
                [(left + half * 0.2, top + half * 0.2), (left + half * 0.2, ground - half * 0.2)],
                fill=(235, 235, 235),
                width=max(1, int(r * 0.08)),
            )
    else:  # cylinder
        half = r * 0.75
        height = r * 1.6
        cap = half * 0.35
        top = ground - height
        draw.ellipse([cx - half, ground - cap, cx + half, ground + cap], fill=_rgb(base * 0.6))
        draw.rectangle([cx - half, top, cx + half, ground], fill=_rgb(base * (0.7 + 0.1 * light)))
        draw.rectangle(
            [cx - half * (0.1 - 0.5 * light), top, cx + half * (0.4 + 0.5 * light), ground],
            fill=_rgb(base * 0.9),
        )
        draw.ellipse([cx - half, top - cap, cx + half, top + cap], fill=_rgb(base * 1.1))
        if obj["metal"]:
            draw.line(
                [(cx + half * 0.3 * light, top + cap), (cx + half * 0.3 * light, ground - cap)],
                fill=(235, 235, 235),
                width=max(1, int(r * 0.08)),
            )
