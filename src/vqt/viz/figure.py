"""Drawing the queries' attention (`vqt viz attention`): one PNG per image, maps from `vqt.viz.attention`.

Layout of a figure: one column per layer (after the input as the model saw it), one row per query (and per head
with `split_heads`); with `columns` the layers wrap into lines of that many panels. Each panel overlays the query's
attention over the patch grid on the image; the thin bar under it splits the query's whole attention between the
patches and each prefix token (CLS, registers), which have no place on the image. Colour: 0 is no attention; the
top of the scale is the panel's own largest patch weight (`scale="panel"`, printed over the panel) or the largest
over the whole figure (`scale="image"`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqt.errors import AdapterError, VQTError
from vqt.viz.attention import LayerMaps, TokenLayout, model_view, query_attention_maps

SCALES = ("panel", "image")
COLORMAP = "inferno"
OVERLAY_ALPHA = 0.6
PATCH_BAR_COLOUR = "#b0b0b0"
PREFIX_COLOURS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class ViewedImage:
    """One image for a figure: its name, what the model saw (H, W, 3 in [0, 1]) and its predicted class."""

    name: str
    pixels: np.ndarray
    prediction: str = ""


def load_for_viz(adapter: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A saved VQT adapter as (model in eval mode, config); anything else is a one-line `VQTError`."""
    from vqt.hub.fetch import load_trained
    from vqt.methods.vqt import VQT

    path = Path(adapter)
    if not path.is_dir():
        raise AdapterError(f"no adapter at {path}: not a folder")
    model, config = load_trained(path)
    if not isinstance(model, VQT):
        raise VQTError(
            f"{path} holds a {config.get('method', type(model).__name__)!r} model; attention maps need a plain VQT "
            "adapter (method 'vqt')"
        )
    return model.eval(), config


def _rows(maps: Sequence[LayerMaps], queries: Sequence[int] | None) -> list[tuple[int, int]]:
    groups = int(maps[0].patches.shape[1])
    most = max(m.num_queries for m in maps)
    chosen = list(range(most)) if queries is None else list(queries)
    return [(q, g) for q in chosen for g in range(groups)]


def draw_attention(
    image: ViewedImage,
    layout: TokenLayout,
    maps: Sequence[LayerMaps],
    *,
    index: int = 0,
    queries: Sequence[int] | None = None,
    scale: str = "panel",
    title: str = "",
    columns: int | None = None,
    cell_inches: float = 1.3,
) -> Any:
    """A matplotlib `Figure` for image `index` of the batch the maps were computed for (see the module notes).

    `queries` picks the query rows (default all); `columns` wraps the layers into lines of that many panels
    (default: all layers on one line), each line repeating the query rows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if scale not in SCALES:
        raise VQTError(f"unknown colour scale {scale!r}; choose from {', '.join(SCALES)}")
    rows = _rows(maps, queries)
    split = int(maps[0].patches.shape[1]) > 1
    layers = len(maps)
    columns = layers if not columns or columns > layers else int(columns)
    blocks = [list(range(start, min(start + columns, layers))) for start in range(0, layers, columns)]
    lines = [(block, row) for block in blocks for row in range(len(rows))]
    height, width = image.pixels.shape[:2]
    extent = (0, width, height, 0)
    panels = {
        (row, m.layer): (m.patches[index, g, q].numpy(), m.prefix[index, g, q].numpy())
        for row, (q, g) in enumerate(rows)
        for m in maps
        if q < m.num_queries
    }
    image_max = max((float(p.max()) for p, _ in panels.values()), default=0.0) or 1.0

    bar = 0.15
    fig = Figure(figsize=(cell_inches * (columns + 1) + 1.4, cell_inches * (1 + bar + 0.22) * len(lines) + 1.3),
                 dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        len(lines), columns + 2, width_ratios=[1.0] * (columns + 1) + [0.08],
        left=0.055, right=0.94, top=1 - 0.7 / fig.get_figheight(), bottom=0.75 / fig.get_figheight(),
        hspace=0.25 + bar, wspace=0.08,
    )

    def cell(line: int, column: int) -> Any:
        axis = fig.add_subplot(grid[line, column])
        axis.set_xticks([])
        axis.set_yticks([])
        return axis

    fig.suptitle(title, fontsize=9)
    for line, (block, row) in enumerate(lines):
        q, g = rows[row]
        axis = cell(line, 0)
        axis.imshow(image.pixels, extent=extent)
        if line == 0:
            axis.set_title(f"input {width}x{height}", fontsize=8)
        label = f"query {q}" + (f"\nhead {g}" if split else "")
        axis.set_ylabel(label, fontsize=8)
        for column, layer in enumerate(block):
            if (row, layer) not in panels:
                continue  # a layer with fewer queries than this row's
            axis = cell(line, column + 1)
            patches, prefix = panels[(row, layer)]
            top = float(patches.max()) if scale == "panel" else image_max
            axis.imshow(image.pixels, extent=extent)
            axis.imshow(patches, cmap=COLORMAP, norm=Normalize(0.0, top or 1.0), alpha=OVERLAY_ALPHA,
                        interpolation="nearest", extent=extent)
            heading = f"layer {layer}" if row == 0 else ""
            if scale == "panel":
                heading = f"{heading}, max {top:.3f}" if heading else f"max {top:.3f}"
            axis.set_title(heading, fontsize=7, pad=2)
            _prefix_bar(axis, float(patches.sum()), prefix, bar)
    colorbar_axis = fig.add_subplot(grid[:, columns + 1])
    if scale == "panel":
        mappable_norm = Normalize(0.0, 1.0)
        label = "patch attention \u00f7 the panel's max\n(0 = none; 1 = the max printed over the panel)"
    else:
        mappable_norm, label = Normalize(0.0, image_max), "patch attention weight\n(0 = none; shared scale)"
    colorbar = fig.colorbar(ScalarMappable(norm=mappable_norm, cmap=COLORMAP), cax=colorbar_axis)
    colorbar.set_label(label, fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    handles = [Patch(color=PATCH_BAR_COLOUR, label="patches")] + [
        Patch(color=PREFIX_COLOURS[i % len(PREFIX_COLOURS)], label=name) for i, name in enumerate(layout.prefix_names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               title="bar under each map: share of the query's attention on", title_fontsize=7,
               bbox_to_anchor=(0.5, 0.0))
    return fig


def _prefix_bar(axis: Any, patch_mass: float, prefix: np.ndarray, height: float) -> None:
    """Under a map, a 100 % bar: the attention on the patches, then on each prefix token; the patch share in it."""
    from matplotlib.patches import Rectangle

    segments = [(patch_mass, PATCH_BAR_COLOUR)] + [
        (float(v), PREFIX_COLOURS[i % len(PREFIX_COLOURS)]) for i, v in enumerate(prefix)
    ]
    total = sum(value for value, _ in segments) or 1.0
    left, top = 0.0, -0.04
    for value, colour in segments:
        axis.add_patch(Rectangle((left, top - height), value / total, height, transform=axis.transAxes,
                                 color=colour, clip_on=False))
        left += value / total
    axis.text(0.02, top - height / 2, f"patches {patch_mass:.0%}", fontsize=6, va="center", ha="left",
              transform=axis.transAxes)


def render_attention(
    adapter: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    split_heads: bool = False,
    queries: Sequence[int] | None = None,
    scale: str = "panel",
    columns: int | None = None,
    batch_size: int = 8,
) -> list[Path]:
    """Write one PNG per image (files, or folders searched recursively) to `out`; returns the files written."""
    from vqt.data.images import open_rgb
    from vqt.inference.predict import collect_images, inference_transform
    from vqt.io import write_atomic

    if scale not in SCALES:
        raise VQTError(f"unknown colour scale {scale!r}; choose from {', '.join(SCALES)}")
    files = collect_images(paths)
    pictures = [open_rgb(path) for path in files]  # every image is read before any work: a bad one fails fast
    model, config = load_for_viz(adapter)
    most = max(model.num_queries)
    if queries is not None:
        bad = [q for q in queries if not 0 <= q < most]
        if bad:
            raise VQTError(f"no query {bad[0]}: the adapter has Q={most} (queries 0..{most - 1})")
    transform = inference_transform(config)
    names = config.get("class_names") or [str(i) for i in range(config["num_classes"])]
    out = Path(out)
    written: list[Path] = []
    used: set[str] = set()
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        images = torch.stack([transform(p) for p in pictures[start : start + batch_size]])
        layout, maps = query_attention_maps(model, images, split_heads=split_heads)
        with torch.no_grad():
            probabilities = model(images).float().softmax(-1)
        for index, path in enumerate(batch):
            score, label = probabilities[index].max(0)
            viewed = ViewedImage(path.name, model_view(images[index], config["transform"]),
                                 f"{names[int(label)]} ({float(score):.2f})")
            title = (f"{path.name}: VQT query attention, {config.get('backbone', '?')}, "
                     f"{layout.grid[0]}x{layout.grid[1]} patches, "
                     f"{'per head' if split_heads else 'heads averaged'}; predicted {viewed.prediction}")
            figure = draw_attention(viewed, layout, maps, index=index, queries=queries, scale=scale, title=title,
                                    columns=columns)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            name = _unique(f"{path.stem}.attention.png", used)
            write_atomic(out / name, buffer.getvalue())
            written.append(out / name)
    return written


def _unique(name: str, used: set[str]) -> str:
    stem, candidate, number = name[: -len(".attention.png")], name, 2
    while candidate in used:
        candidate, number = f"{stem}-{number}.attention.png", number + 1
    used.add(candidate)
    return candidate
