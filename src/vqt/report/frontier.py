"""The memory-limited comparison (the paper's accuracy-under-a-memory-budget figure) from `vqt compare`'s rows.

A budget is a fraction of one reference run's training memory (by default the unshrunk VPT-deep's). At each
budget every method is represented by its best run that fits: the adapting methods enter with their shrunk runs
(`--tuned-layers`: fewer tuned blocks, so backward stops earlier and less is kept), the store methods (VQT,
linear, Head2Toe) with theirs. A method with no run under a budget has no accuracy there. The frontier of a method
is the best accuracy it reaches at or below each memory: a step line through its runs.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vqt.errors import VQTError

DEFAULT_BUDGETS = (0.25, 0.5, 1.0)
MEMORY_LABELS = {"saved_mib_per_sample": "saved activations (MiB/sample)", "peak_mib": "peak memory (MiB)",
                 "step_increase_mib": "training memory over the loaded model (MiB)"}


def _points(methods: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    return [m for m in methods if m.get(key) is not None and m.get("mean_accuracy") is not None]


def _families(methods: Sequence[Mapping[str, Any]], key: str) -> dict[str, list[Mapping[str, Any]]]:
    """The runs with a memory and an accuracy, by method (its shrunk and unshrunk runs together), in first-seen
    order."""
    families: dict[str, list[Mapping[str, Any]]] = {}
    for m in _points(methods, key):
        families.setdefault(str(m.get("family") or m["method"]), []).append(m)
    return families


def reference_memory(methods: Sequence[Mapping[str, Any]], key: str, reference: str) -> tuple[float, str]:
    """The memory budgets are fractions of: the largest `key` among the unshrunk runs of method `reference`."""
    candidates = [m for m in methods if m.get("family") == reference and m.get("tuned_layers") is None
                  and m.get(key) is not None]
    if not candidates:
        raise VQTError(f"--budgets are fractions of an unshrunk {reference} run's memory, but no {reference} run "
                       f"without --tuned-layers has a memory number; add one or name another with --budget-of")
    best = max(candidates, key=lambda m: m[key])
    return float(best[key]), str(best["method"])


def budget_table(methods: Sequence[Mapping[str, Any]], key: str, budgets: Sequence[float], reference: str
                 ) -> dict[str, Any]:
    """Per method family and budget: the best mean accuracy among its runs whose `key` memory fits, and which run.

    Returns {"reference": label, "reference_mib": x, "budgets": [{"fraction", "mib"}], "rows": [{"family",
    "cells": [{"accuracy", "run", "memory"} | None per budget]}]}, families in the order they first appear."""
    if not budgets or any(not (b > 0 and math.isfinite(b)) for b in budgets):
        raise VQTError(f"--budgets must be positive fractions of the reference memory, got {list(budgets)}")
    total, label = reference_memory(methods, key, reference)
    limits = [{"fraction": float(b), "mib": float(b) * total} for b in budgets]
    rows = []
    for family, runs in _families(methods, key).items():
        cells = []
        for limit in limits:
            fitting = [m for m in runs if m[key] <= limit["mib"] * (1 + 1e-9)]
            best = max(fitting, key=lambda m: (m["mean_accuracy"], -m[key]), default=None)
            cells.append(None if best is None else {"accuracy": best["mean_accuracy"], "run": best["method"],
                                                     "memory": best[key], "tuned_layers": best.get("tuned_layers")})
        rows.append({"family": family, "cells": cells})
    return {"reference": label, "reference_mib": total, "budgets": limits, "rows": rows, "key": key}


def frontier(runs: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """(memory, best accuracy at or below it) at each run of one family that raises the best: the step line."""
    steps: list[tuple[float, float]] = []
    for m in sorted(runs, key=lambda m: (m[key], -m["mean_accuracy"])):
        if not steps or m["mean_accuracy"] > steps[-1][1]:
            steps.append((float(m[key]), float(m["mean_accuracy"])))
    return steps


def blocks(count: int) -> str:
    return "last block" if count == 1 else f"last {count} blocks"


def markdown(table: Mapping[str, Any]) -> str:
    """The budget table: one row per method, one column per budget (accuracy, and the run that reached it)."""
    unit = MEMORY_LABELS.get(table["key"], table["key"])
    head = [f"{b['fraction']:g}× ({b['mib']:.3g})" for b in table["budgets"]]
    lines = ["## Accuracy under a training-memory budget", "",
             f"Budgets are fractions of the memory of `{table['reference']}` ({table['reference_mib']:.3g}; "
             f"{unit}); each cell is the method's best mean accuracy among its runs that fit, and that run.", "",
             "| Method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for row in table["rows"]:
        cells = ["–" if c is None else f"{c['accuracy']:.2f} ({c['run']}"
                 + ("" if c.get("tuned_layers") is None else f", {blocks(c['tuned_layers'])}") + ")"
                 for c in row["cells"]]
        lines.append(f"| {row['family']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budgets_csv(table: Mapping[str, Any]) -> str:
    """One row per (method, budget): fraction, MiB, best accuracy that fits and the run (empty when none fits)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "budget_fraction", "budget", "accuracy", "run", "run_memory"])
    for row in table["rows"]:
        for budget, cell in zip(table["budgets"], row["cells"], strict=True):
            writer.writerow([row["family"], budget["fraction"], round(budget["mib"], 4),
                             "" if cell is None else round(cell["accuracy"], 4), "" if cell is None else cell["run"],
                             "" if cell is None else round(cell["memory"], 4)])
    return buffer.getvalue()


def plot(methods: Sequence[Mapping[str, Any]], table: Mapping[str, Any], path: Path, title: str) -> Path:
    """Accuracy against memory: each run a point, each method its frontier (step line), each budget a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = table["key"]
    points = _points(methods, key)
    if not points:
        raise VQTError("no run has both a memory number and an accuracy to draw")
    figure = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    right = max(max(m[key] for m in points), table["budgets"][-1]["mib"]) * 1.05
    for family, runs in _families(methods, key).items():
        steps = frontier(runs, key)
        xs = [x for x, _ in steps] + [right]
        ys = [y for _, y in steps] + [steps[-1][1]]
        line = axes.step(xs, ys, where="post", linewidth=1.5, label=family)[0]
        axes.scatter([m[key] for m in runs], [m["mean_accuracy"] for m in runs], color=line.get_color(),
                     marker="*" if family.startswith("vqt") else "o", s=60, zorder=3)
        for m in runs:
            tuned = m.get("tuned_layers")
            if tuned is not None:
                axes.annotate(f"{tuned}L", (m[key], m["mean_accuracy"]), textcoords="offset points",
                              xytext=(3, 3), fontsize=7)
    for budget in table["budgets"]:
        axes.axvline(budget["mib"], color="#888888", linestyle="--", linewidth=0.8)
        axes.annotate(f"{budget['fraction']:g}×", (budget["mib"], 0), xycoords=("data", "axes fraction"),
                      textcoords="offset points", xytext=(2, 2), fontsize=7, color="#555555")
    axes.set_xlabel(MEMORY_LABELS.get(key, key))
    axes.set_ylabel("mean accuracy (%)")
    axes.set_title(textwrap.fill(title, 100), fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
