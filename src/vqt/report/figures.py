"""The report's figures (matplotlib, Agg, no pyplot state): grid heatmap, training curves, kept feature groups.

Each function draws one PNG for one task and returns its path. Accuracies are shown in percent, as in the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from vqt.report.load import TaskReport, Unit

DPI = 100
FAILED_COLOR = "#bbbbbb"


def _figure(width: float, height: float, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _number(value) -> float:
    return math.nan if value is None else float(value)


def heatmap(task: TaskReport, lrs: Sequence[float], wds: Sequence[float], path: Path) -> Path:
    """Last-epoch val accuracy over the lr x wd grid; the chosen configuration boxed, failed/missing cells grey."""
    import numpy as np
    from matplotlib.patches import Rectangle

    by_config = {(u.lr, u.weight_decay): u for u in task.grid}
    values = np.full((len(lrs), len(wds)), np.nan)
    for i, lr in enumerate(lrs):
        for j, wd in enumerate(wds):
            unit = by_config.get((lr, wd))
            if unit is not None and unit.ok and unit.result.get("val_accuracy") is not None:
                values[i, j] = 100.0 * unit.result["val_accuracy"]
    figure, (axes,) = _figure(1.5 + 0.7 * len(wds), 1.3 + 0.45 * len(lrs))
    axes.set_facecolor(FAILED_COLOR)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if high - low < 1e-9:  # one value everywhere: a scale around it, within 0..100
        low = min(max(0.0, low - 1.0), 98.0)
        high = low + 2.0
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high, aspect="auto")
    for i, lr in enumerate(lrs):
        for j, wd in enumerate(wds):
            unit = by_config.get((lr, wd))
            if np.isfinite(values[i, j]):
                bright = (values[i, j] - low) / (high - low) > 0.6
                axes.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                          color="black" if bright else "white")
            else:
                axes.text(j, i, "failed" if unit is not None else "not run", ha="center", va="center", fontsize=7,
                          color="#333333")
    if task.chosen is not None and task.chosen[0] in lrs and task.chosen[1] in wds:
        i, j = list(lrs).index(task.chosen[0]), list(wds).index(task.chosen[1])
        axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    axes.set_xticks(range(len(wds)), [f"{wd:g}" for wd in wds])
    axes.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    axes.set_xlabel("weight decay")
    axes.set_ylabel("lr")
    axes.set_title(f"{task.name}: val accuracy (%)", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.9)
    return _save(figure, path)


def _series(units: Sequence[Unit], key: str) -> list[tuple[Unit, list[int], list[float]]]:
    out = []
    for unit in units:
        points = [(r["epoch"], _number(r.get(key))) for r in unit.epochs if r.get(key) is not None]
        out.append((unit, [p[0] for p in points], [p[1] for p in points]))
    return out


def _loss_axes(axes, series, colors, styles, labels, widths=None) -> None:
    values = [v for _, _, ys in series for v in ys if math.isfinite(v) and v > 0]
    widths = widths or [1.3] * len(series)
    for (_, xs, ys), color, style, label, width in zip(series, colors, styles, labels, widths, strict=True):
        axes.plot(xs, ys, color=color, linestyle=style, linewidth=width, label=label)
    if values and max(values) / min(values) > 20:
        axes.set_yscale("log")
    _epoch_axis(axes)
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)


def _epoch_axis(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    axes.set_xlabel("epoch")


def grid_curves(task: TaskReport, lrs: Sequence[float], wds: Sequence[float], path: Path) -> Path:
    """Training loss and val accuracy per epoch of every grid configuration (colour: lr, line style: wd)."""
    from matplotlib import colormaps

    palette = colormaps["plasma"]
    styles_by_wd = ["-", "--", ":", "-."]
    units = sorted(task.grid, key=lambda u: (-u.lr, -u.weight_decay))
    colors = [palette(0.85 * (list(lrs).index(u.lr) / max(1, len(lrs) - 1))) if u.lr in lrs else "black"
              for u in units]
    styles = [styles_by_wd[list(wds).index(u.weight_decay) % 4] if u.weight_decay in wds else "-" for u in units]
    chosen = task.chosen
    labels = [f"lr {u.lr:g}, wd {u.weight_decay:g}" + (" (chosen)" if chosen == (u.lr, u.weight_decay) else "")
              + ("" if u.ok else " (failed)") for u in units]
    widths = [2.6 if chosen == (u.lr, u.weight_decay) else 1.3 for u in units]
    figure, (loss, accuracy) = _figure(7.6, 3.3, panels=2)
    _loss_axes(loss, _series(units, "train_loss"), colors, styles, labels, widths)
    loss.set_title(f"{task.name}: grid on train800", fontsize=9)
    for (_, xs, ys), color, style, width in zip(_series(units, "val_accuracy"), colors, styles, widths, strict=True):
        accuracy.plot(xs, [100.0 * y for y in ys], color=color, linestyle=style, linewidth=width, marker="o",
                      markersize=3)
    _epoch_axis(accuracy)
    accuracy.set_ylabel("val200 accuracy (%)")
    accuracy.set_title(f"{task.name}: grid, judged on val200", fontsize=9)
    accuracy.grid(alpha=0.3)
    if units:
        figure.legend(*loss.get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    return _save(figure, path)


def final_curves(task: TaskReport, path: Path) -> Path:
    """Training loss per epoch of every final seed on train800val200; test accuracies in the legend."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    units = sorted(task.finals, key=lambda u: u.seed)
    labels = []
    for unit in units:
        label = f"seed {unit.seed}"
        test = unit.result.get("test_accuracy")
        if test is not None:
            label += f": test {100 * test:.1f}%"
        compressed = unit.result.get("compressed_test_accuracy")
        if compressed is not None:
            label += f", compressed {100 * compressed:.1f}%"
        labels.append(label + ("" if unit.ok else " (failed)"))
    figure, (axes,) = _figure(5.2, 3.3)
    _loss_axes(axes, _series(units, "train_loss"), [palette(i % 10) for i in range(len(units))],
               ["-"] * len(units), labels)
    where = f"lr {units[0].lr:g}, wd {units[0].weight_decay:g}" if units else ""
    axes.set_title(f"{task.name}: final seeds on train800val200 ({where})", fontsize=9)
    if units:
        axes.legend(fontsize=7, frameon=False)
    return _save(figure, path)


def kept_bars(task: TaskReport, path: Path) -> Path:
    """Kept fraction of every feature piece (pre-logits, layer 0..L-1): mean over seeds, each seed a dot."""
    import numpy as np

    names = [name for name, _, _ in task.kept[0].pieces]
    fractions = np.array([[kept / total for _, kept, total in k.pieces] for k in task.kept])
    positions = np.arange(len(names))
    figure, (axes,) = _figure(max(4.5, 1.2 + 0.36 * len(names)), 3.3)
    axes.bar(positions, fractions.mean(axis=0), color="#4c72b0", width=0.7, label="mean over seeds")
    for row in fractions:
        axes.scatter(positions, row, color="black", s=9, zorder=3)
    overall = float(np.mean([k.fraction for k in task.kept]))
    axes.axhline(overall, color="red", linestyle="--", linewidth=1, label=f"kept overall {overall:.0%}")
    axes.set_xticks(positions, ["pre-\nlogits" if n == "pre-logits" else n.replace("layer ", "") for n in names],
                    fontsize=8)
    axes.set_xlabel("feature group (layer)")
    axes.set_ylabel("fraction of features kept")
    axes.set_ylim(0, 1.2)  # room above the bars for the legend
    seeds = len(task.kept)
    axes.set_title(f"{task.name}: what the group lasso kept ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
    axes.legend(fontsize=7, loc="upper right", ncol=2, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
