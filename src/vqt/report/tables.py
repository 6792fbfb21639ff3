"""The results table: one row per task (chosen lr/wd, val200, test mean ± std over seeds, compressed beside it),
then the Natural / Specialized / Structured group means and their mean, as Markdown, CSV and a rich table.
Tasks outside VTAB-1k (a user's own folders, group "Other") get their own group mean and an overall
"Mean (all tasks)"; VTAB's "Mean" stays the mean of the three VTAB group means.

Every number comes from the task summaries, which come from the units' committed results (and the same numbers
are in the run's metrics.jsonl), so the table can always be rebuilt from the run folder.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from vqt.data.registry import GROUPS

COLUMNS = ("task", "group", "queries", "lr", "weight_decay", "val_accuracy", "test_mean", "test_std", "seeds",
           "compressed_mean", "compressed_std", "keep", "status", "notes")


def percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 4)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population std (as numpy's default), None for no values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def task_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A table row (percentages) from a task summary (fractions)."""
    compressed = summary.get("compressed") or {}
    return {
        "task": summary["task"],
        "group": summary["group"],
        "queries": summary.get("queries"),
        "lr": summary.get("lr"),
        "weight_decay": summary.get("weight_decay"),
        "val_accuracy": percent(summary.get("val_accuracy")),
        "test_mean": percent(summary.get("test_mean")),
        "test_std": percent(summary.get("test_std")),
        "seeds": summary.get("seeds_done"),
        "compressed_mean": percent(compressed.get("test_mean")),
        "compressed_std": percent(compressed.get("test_std")),
        "keep": compressed.get("keep"),
        "status": summary.get("status"),
        "notes": "; ".join(summary.get("notes", [])),
    }


ALL_TASKS_MEAN = "Mean (all tasks)"


def group_means(rows: Sequence[Mapping[str, Any]], key: str = "test_mean") -> dict[str, float | None]:
    """Group means (None where a group has no number), in this order:

    - Natural, Specialized, Structured: the mean over the tasks of the group that have a number;
    - Mean: VTAB-1k's, the mean of those group means present (tasks outside VTAB-1k never count in it);
    - only when some task is outside VTAB-1k (group "Other": a user's own folder): its group's mean, then
      "Mean (all tasks)", the plain mean over every task run that has a number, whatever its group.
    """
    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    means: dict[str, float | None] = {}
    for group in GROUPS:
        means[group] = mean([r[key] for r in rows if r["group"] == group and r[key] is not None])
    means["Mean"] = mean([v for v in means.values() if v is not None])
    others = list(dict.fromkeys(r["group"] for r in rows if r["group"] not in GROUPS))
    for group in others:
        means[group] = mean([r[key] for r in rows if r["group"] == group and r[key] is not None])
    if others:
        means[ALL_TASKS_MEAN] = mean([r[key] for r in rows if r[key] is not None])
    return means


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _g(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def mean_pm_std(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.2f} ± {std or 0.0:.2f}"


def markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    compressed = any(r["compressed_mean"] is not None for r in rows)
    header = ["Task", "Group", "Q", "lr", "wd", "val200", "test (mean ± std)", "seeds"]
    if compressed:
        header += ["compressed (mean ± std)", "keep"]
    header.append("status")
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["task"], r["group"], _fmt(r["queries"]), _g(r["lr"]), _g(r["weight_decay"]),
                 _fmt(r["val_accuracy"]), mean_pm_std(r["test_mean"], r["test_std"]), _fmt(r["seeds"])]
        if compressed:
            cells += [mean_pm_std(r["compressed_mean"], r["compressed_std"]), _fmt(r["keep"])]
        status = r["status"] + (f" ({r['notes']})" if r["notes"] else "")
        cells.append(status)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    means = group_means(rows)
    compressed_means = group_means(rows, "compressed_mean") if compressed else {}
    lines += ["", "| Group | test mean" + (" | compressed mean" if compressed else "") + " |",
              "|---|---|" + ("---|" if compressed else "")]
    for group, value in means.items():
        cells = [group, _fmt(value)] + ([_fmt(compressed_means[group])] if compressed else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Task rows, then one row per group mean (task = the group name, group = 'mean')."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    means = group_means(rows)
    compressed_means = group_means(rows, "compressed_mean")
    for group, value in means.items():
        writer.writerow({"task": group, "group": "mean", "test_mean": "" if value is None else round(value, 4),
                         "compressed_mean": ("" if compressed_means[group] is None
                                             else round(compressed_means[group], 4)),
                         "status": "", "notes": ""})
    return buffer.getvalue()


def rich_table(rows: Sequence[Mapping[str, Any]], title: str = "VTAB-1k results"):
    """The same table for the terminal."""
    from rich.table import Table

    compressed = any(r["compressed_mean"] is not None for r in rows)
    table = Table(title=title)
    for name in ("Task", "Group", "Q", "lr", "wd", "val200", "test", *(["compressed"] if compressed else []),
                 "status"):
        table.add_column(name, justify="left" if name in ("Task", "Group", "status") else "right")
    for r in rows:
        table.add_row(r["task"], r["group"], _fmt(r["queries"]), _g(r["lr"]), _g(r["weight_decay"]),
                      _fmt(r["val_accuracy"]), mean_pm_std(r["test_mean"], r["test_std"]),
                      *([mean_pm_std(r["compressed_mean"], r["compressed_std"])] if compressed else []),
                      r["status"] + (f" ({r['notes']})" if r["notes"] else ""))
    means = group_means(rows)
    compressed_means = group_means(rows, "compressed_mean") if compressed else {}
    table.add_section()
    for group, value in means.items():
        table.add_row(group, "", "", "", "", "", _fmt(value),
                      *([_fmt(compressed_means[group])] if compressed else []), "")
    return table
