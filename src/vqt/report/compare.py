"""`vqt compare`: several sweep run folders side by side — accuracy per task and group, and what each method costs.

Loading and checking the runs, the per-run memory cache and the tables are pure functions here; the command
(`vqt.cli.compare`) only parses options, measures what the cache lacks and writes the files.

Rules (each refusal is one `VQTError` line naming the difference):

- every path must be a finished or partial `vqt sweep` run folder (`config.yaml` and a `summary.json` with `rows`);
- all runs must share the backbone (spelling), the input size (`img_size` of config.yaml, else the transform's
  size), the transform description (summary.json `transform`) and the compute precision (config.yaml `precision`;
  runs made before it was recorded are fp32);
- their task lists must overlap; when they only partly do, the comparison uses the common tasks and says which
  were left out (group means are recomputed over the common tasks);
- a run folder may be given once; two runs of the same method are labelled `method (folder name)`, and refused when
  their folder names are the same too (rename one folder to tell them apart).

Memory cache: `RUN_DIR/memory.json`, `{"format": "vqt-memory-cache", "format_version": 1, "entries": [...]}`, each
entry the key fields `backbone`, `batch`, `img_size`, `device`, `method` plus the `vqt.bench.methods` row
(`trainable_params`, `saved_mib_per_sample`, `peak_mib`, `step_increase_mib`, ...) and when/where it was measured.
Failed measurements are not cached.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from vqt.errors import VQTError
from vqt.hub.card import parameter_counts
from vqt.report import tables
from vqt.rundir import CONFIG_FILE, SUMMARY_FILE, read_json, write_json

log = logging.getLogger("vqt.protocol")

MEMORY_FILE = "memory.json"
MEMORY_FORMAT = "vqt-memory-cache"
MEMORY_FORMAT_VERSION = 1
MEMORY_KEY = ("backbone", "batch", "img_size", "device", "method")
GROUP_ROWS = (*tables.GROUPS, "Mean")
PLOT_KEYS = {"saved": "saved_mib_per_sample", "peak": "peak_mib", "increase": "step_increase_mib"}


@dataclass
class Run:
    """One sweep run folder as `vqt compare` sees it."""

    path: Path
    method: str
    backbone: str
    img_size: int | None
    transform: dict[str, Any] | None
    rows: list[dict[str, Any]]
    precision: str
    status: str
    seconds: float | None
    config: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def tasks(self) -> list[str]:
        return [row["task"] for row in self.rows]

    @property
    def method_kwargs(self) -> dict[str, Any]:
        """The builder options that change what one training step costs: `--tuned-layers` (empty: none)."""
        tuned = self.config.get("tuned_layers")
        return {} if tuned is None else {"tuned_layers": int(tuned)}


def _effective_img_size(config: Mapping[str, Any], transform: Mapping[str, Any] | None) -> int | None:
    if config.get("img_size") is not None:
        return int(config["img_size"])
    size = (transform or {}).get("size")
    if isinstance(size, (list, tuple)) and size:
        return int(size[0])
    return int(size) if isinstance(size, (int, float)) else None


def load_run(path: str | Path) -> Run:
    """Read a sweep run folder; refuse anything else with one line."""
    path = Path(path)
    if not path.is_dir():
        raise VQTError(f"not a sweep run folder: {path} (no such folder)")
    summary_path, config_path = path / SUMMARY_FILE, path / CONFIG_FILE
    if not summary_path.is_file() or not config_path.is_file():
        missing = SUMMARY_FILE if not summary_path.is_file() else CONFIG_FILE
        raise VQTError(f"not a sweep run folder: {path} (no {missing})")
    try:
        summary = read_json(summary_path)
    except json.JSONDecodeError as error:
        raise VQTError(f"not a sweep run folder: {summary_path} is not valid JSON ({error})") from None
    import yaml

    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise VQTError(f"not a sweep run folder: {config_path} is not valid YAML ({error})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list) or "method" not in summary:
        raise VQTError(f"not a sweep run folder: {path} (its summary.json has no per-task rows; "
                       f"`vqt compare` reads the folders `vqt sweep` writes)")
    transform = summary.get("transform")
    return Run(
        path=path,
        method=str(summary["method"]),
        backbone=str(summary.get("backbone") or config.get("backbone")),
        img_size=_effective_img_size(config, transform),
        transform=transform,
        rows=[dict(row) for row in summary["rows"]],
        precision=str(config.get("precision") or "fp32"),
        status=str(summary.get("status", "unknown")),
        seconds=summary.get("seconds"),
        config=dict(config),
    )


def _first_difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    a, b = a or {}, b or {}
    for key in sorted(set(a) | set(b), key=lambda k: (k != "name", k)):  # the transform's name first
        if a.get(key) != b.get(key):
            return f"{key} {json.dumps(a.get(key))} vs {json.dumps(b.get(key))}"
    return "same"


def check_comparable(runs: Sequence[Run]) -> None:
    """Refuse runs that cannot share a table: backbone, image size, transform, precision, the same folder twice."""
    if not runs:
        raise VQTError("no run folders to compare")
    first = runs[0]
    seen: dict[Path, Path] = {}
    for run in runs:
        resolved = run.path.resolve()
        if resolved in seen:
            raise VQTError(f"run folder given twice: {seen[resolved]} and {run.path}")
        seen[resolved] = run.path
    for run in runs[1:]:
        where = f"{first.path} vs {run.path}"
        if run.backbone != first.backbone:
            raise VQTError(f"runs not comparable, other backbone: {first.backbone} vs {run.backbone} ({where})")
        if run.img_size != first.img_size:
            raise VQTError(f"runs not comparable, other image size: {first.img_size} vs {run.img_size} ({where})")
        if run.transform != first.transform:
            raise VQTError(f"runs not comparable, other transform: "
                           f"{_first_difference(first.transform, run.transform)} ({where})")
        if run.precision != first.precision:
            raise VQTError(f"runs not comparable, other precision: {first.precision} vs {run.precision} ({where})")


def assign_labels(runs: Sequence[Run]) -> None:
    """Label = method; two runs of one method become `method (folder name)`; same folder names too: refused."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    for method, group in by_method.items():
        if len(group) == 1:
            group[0].label = method
            continue
        names: dict[str, Run] = {}
        for run in group:
            if run.path.name in names:
                raise VQTError(f"ambiguous: {names[run.path.name].path} and {run.path} are both method {method!r} "
                               f"in folders named {run.path.name!r}; rename one folder to tell them apart")
            names[run.path.name] = run
            run.label = f"{method} ({run.path.name})"


def common_tasks(runs: Sequence[Run]) -> tuple[list[str], str | None]:
    """Tasks every run has (in the first run's order) and a note naming what was left out, None when nothing was."""
    shared = set(runs[0].tasks)
    for run in runs[1:]:
        shared &= set(run.tasks)
    if not shared:
        lists = "; ".join(f"{run.path}: {','.join(run.tasks) or 'none'}" for run in runs)
        raise VQTError(f"runs not comparable, no task in common ({lists})")
    order = [task for task in runs[0].tasks if task in shared]
    left = [f"{task} ({run.path.name})" for run in runs for task in run.tasks if task not in shared]
    if not left:
        return order, None
    return order, (f"compared on the {len(order)} task(s) common to all runs ({', '.join(order)}); "
                   f"left out: {', '.join(left)}")


def load_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str], str | None]:
    """Load, check and label the runs; returns them, the common tasks and the partial-overlap note."""
    runs = [load_run(path) for path in paths]
    check_comparable(runs)
    assign_labels(runs)
    tasks, note = common_tasks(runs)
    return runs, tasks, note


# ---------------------------------------------------------------------- trainable parameters


def trainable_params(run: Run, tasks: Sequence[str]) -> float | None:
    """Mean over `tasks` of the parameters saved in each task's first seed adapter (what trained); None if absent."""
    counts = []
    for task in tasks:
        seeds = sorted((run.path / "tasks" / task / "final").glob("seed*/adapter"))
        files = sorted(seeds[0].glob("*.safetensors")) if seeds else []
        if files:
            try:
                counts.append(sum(sum(parameter_counts(f).values()) for f in files))
            except (OSError, ValueError, SafetensorError):
                log.warning("cannot read the adapter weights of %s/%s", run.path, task)
    return sum(counts) / len(counts) if counts else None


# ---------------------------------------------------------------------- memory cache


def memory_key(backbone: str, batch: int, img_size: int | None, device: str, method: str,
               method_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a cached measurement is of; `method_kwargs` (e.g. tuned_layers) only when given, so the entries
    cached before it existed (of unshrunk methods) still match."""
    key = {"backbone": backbone, "batch": int(batch), "img_size": img_size, "device": device, "method": method}
    if method_kwargs:
        key["method_kwargs"] = dict(method_kwargs)
    return key


def same_key(entry: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    """Whether a cache entry is the measurement `key` names (a missing `method_kwargs` is the empty one)."""
    return (all(entry.get(name) == key.get(name) for name in MEMORY_KEY)
            and (entry.get("method_kwargs") or {}) == (key.get("method_kwargs") or {}))


def read_memory_cache(run_dir: Path) -> list[dict[str, Any]]:
    """The cached entries of a run folder; an unreadable or foreign cache counts as empty (and is rewritten)."""
    path = Path(run_dir) / MEMORY_FILE
    if not path.is_file():
        return []
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        log.warning("ignoring unreadable memory cache %s (%s)", path, error)
        return []
    if not isinstance(data, dict) or data.get("format") != MEMORY_FORMAT or not isinstance(data.get("entries"), list):
        log.warning("ignoring %s: not a %s file", path, MEMORY_FORMAT)
        return []
    return [entry for entry in data["entries"] if isinstance(entry, dict)]


def find_cached(entries: Sequence[Mapping[str, Any]], key: Mapping[str, Any]) -> dict[str, Any] | None:
    for entry in entries:
        if same_key(entry, key) and "error" not in entry:
            return dict(entry)
    return None


def write_memory_cache(run_dir: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    write_json(Path(run_dir) / MEMORY_FILE, {"format": MEMORY_FORMAT, "format_version": MEMORY_FORMAT_VERSION,
                                             "entries": list(entries)})


def memory_rows(
    runs: Sequence[Run],
    *,
    batch: int,
    device: str,
    measure: bool = True,
    measure_all: Callable[..., list[dict[str, Any]]] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Label -> the method's benchmark row, from each run's cache; what is missing is measured (once per method,
    `measure_all`, default `vqt.bench.methods.measure_all`) and cached, unless `measure` is False.

    A measurement that failed is returned (row with `error`) but not cached. Runs without a row are left out."""
    found: dict[str, dict[str, Any]] = {}
    missing: dict[tuple[str, str], list[Run]] = {}  # (method, its kwargs as JSON) -> the runs that need it
    for run in runs:
        key = memory_key(run.backbone, batch, run.img_size, device, run.method, run.method_kwargs)
        entry = find_cached(read_memory_cache(run.path), key)
        if entry is not None:
            found[run.label] = entry
        elif measure:
            missing.setdefault((run.method, json.dumps(run.method_kwargs, sort_keys=True)), []).append(run)
    if missing:
        if measure_all is None:
            from vqt.bench import methods as bench_methods

            measure_all = bench_methods.measure_all
        first = next(iter(missing.values()))[0]
        wanted = list(missing)
        measured = measure_all([method for method, _ in wanted], first.backbone, batch, first.img_size, 0, device,
                               progress=progress, method_kwargs=[json.loads(kwargs) for _, kwargs in wanted])
        description = _device_description(device)
        for (method, _), row in zip(wanted, measured, strict=True):
            for run in missing[(method, _)]:
                entry = {**memory_key(run.backbone, batch, run.img_size, device, method, run.method_kwargs), **row,
                         "device_description": description, "measured": date.today().isoformat()}
                found[run.label] = entry
                if "error" in row:
                    continue
                entries = [e for e in read_memory_cache(run.path) if not same_key(e, entry)]
                write_memory_cache(run.path, [*entries, entry])
    return found


def _device_description(device: str) -> str:
    try:
        from vqt.bench.methods import device_description

        return device_description(device)
    except Exception:  # noqa: BLE001 - a description is nice to have, never worth failing for
        return device


# ---------------------------------------------------------------------- tables


def task_table(runs: Sequence[Run], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Rows: each common task, then the group means and their mean; per run label `(mean, std)` in percent."""
    out: list[dict[str, Any]] = []
    by_run = {run.label: {row["task"]: row for row in run.rows} for run in runs}
    for task in tasks:
        first = by_run[runs[0].label][task]
        row: dict[str, Any] = {"task": task, "group": first.get("group")}
        for run in runs:
            r = by_run[run.label][task]
            row[run.label] = (r.get("test_mean"), r.get("test_std"))
        out.append(row)
    means = {run.label: group_means_of(run, tasks) for run in runs}
    extra = [g for g in means[runs[0].label] if g not in GROUP_ROWS]  # a user's own group, "Mean (all tasks)"
    for group in (*GROUP_ROWS, *extra):
        row = {"task": group, "group": "mean"}
        for run in runs:
            row[run.label] = (means[run.label][group], None)
        out.append(row)
    return out


def group_means_of(run: Run, tasks: Sequence[str]) -> dict[str, float | None]:
    """`vqt.report.tables.group_means` over the given tasks of one run."""
    wanted = set(tasks)
    return tables.group_means([row for row in run.rows if row["task"] in wanted])


def mean_accuracy(run: Run, tasks: Sequence[str]) -> float | None:
    """The run's mean over the compared tasks: VTAB-1k's mean of group means, or, when a compared task is a
    user's own (group "Other", outside VTAB-1k's means), the plain mean over every compared task."""
    means = group_means_of(run, tasks)
    return means[tables.ALL_TASKS_MEAN] if tables.ALL_TASKS_MEAN in means else means["Mean"]


def method_table(runs: Sequence[Run], tasks: Sequence[str], memory: Mapping[str, Mapping[str, Any]]
                 ) -> list[dict[str, Any]]:
    """One row per run: mean accuracy over the common tasks (`mean_accuracy`), trainable parameters, memory,
    training time."""
    rows = []
    for run in runs:
        mem = memory.get(run.label) or {}
        failed = mem.get("error")
        rows.append({
            "method": run.label,
            "family": run.method,
            "tuned_layers": run.method_kwargs.get("tuned_layers"),
            "run": str(run.path),
            "status": run.status,
            "mean_accuracy": mean_accuracy(run, tasks),
            "trainable_params": trainable_params(run, tasks),
            "saved_mib_per_sample": None if failed else mem.get("saved_mib_per_sample"),
            "peak_mib": None if failed else mem.get("peak_mib"),
            "step_increase_mib": None if failed else mem.get("step_increase_mib"),
            "memory_error": failed,
            "seconds": run.seconds,
        })
    return rows


def _cell(value: float | None, digits: int = 2, thousands: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def markdown(runs: Sequence[Run], tasks: Sequence[str], methods: Sequence[Mapping[str, Any]], *,
             note: str | None = None, memory_caption: str | None = None) -> str:
    """Both tables: tasks × methods (test mean ± std, %, group means), then each method's cost."""
    first = runs[0]
    labels = [run.label for run in runs]
    lines = [f"# Comparison on `{first.backbone}`, {first.img_size}px, transform "
             f"`{(first.transform or {}).get('name', '?')}`, {first.precision}", ""]
    if note:
        lines += [f"Note: {note}.", ""]
    lines += ["| Task | Group | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for row in task_table(runs, tasks):
        if row["group"] == "mean":
            cells = [f"**{row['task']}**", ""] + [_cell(row[label][0]) for label in labels]
        else:
            cells = [row["task"], row["group"] or ""] + [tables.mean_pm_std(*row[label]) for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy (%), mean ± std over seeds; group means over the compared tasks.", ""]
    lines += ["| Method | mean acc. | trainable params | saved MiB/sample | peak MiB | step increase MiB | "
              "training time (s) | status |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in methods:
        memory_cells = ([f"failed: {str(m['memory_error'])[:60]}", "", ""] if m["memory_error"] else
                        [_cell(m["saved_mib_per_sample"], 3), _cell(m["peak_mib"], 0, True),
                         _cell(m["step_increase_mib"], 0, True)])
        lines.append("| " + " | ".join([m["method"], _cell(m["mean_accuracy"]),
                                         _cell(m["trainable_params"], 0, True), *memory_cells,
                                         _cell(m["seconds"], 1), m["status"]]) + " |")
    lines += ["", "Trainable parameters: mean over the compared tasks of what each task's saved adapter holds. "
              "Training time: the whole sweep (all its tasks, feature extraction included)."]
    if memory_caption:
        lines.append(f"Memory: {memory_caption}.")
    return "\n".join(lines) + "\n"


TASK_CSV_BASE = ("task", "group")
METHOD_COLUMNS = ("method", "run", "status", "mean_accuracy", "trainable_params", "saved_mib_per_sample", "peak_mib",
                  "step_increase_mib", "memory_error", "seconds")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 4) if isinstance(value, float) else value


def tasks_csv(runs: Sequence[Run], tasks: Sequence[str]) -> str:
    """Tasks × methods: per label `<label>` (mean %) and `<label> std`; group-mean rows have group = 'mean'."""
    labels = [run.label for run in runs]
    columns = [*TASK_CSV_BASE, *[c for label in labels for c in (label, f"{label} std")]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in task_table(runs, tasks):
        record = {"task": row["task"], "group": row["group"] or ""}
        for label in labels:
            mean, std = row[label]
            record[label], record[f"{label} std"] = _csv_value(mean), _csv_value(std)
        writer.writerow(record)
    return buffer.getvalue()


def methods_csv(methods: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METHOD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in methods:
        writer.writerow({k: _csv_value(m.get(k)) for k in METHOD_COLUMNS})
    return buffer.getvalue()


def plot_points(methods: Sequence[Mapping[str, Any]], memory_key: str
                ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows and accuracies in the shape `vqt.bench.methods.scatter_plot` takes (method = the run's label)."""
    rows = [{"method": m["method"], memory_key: m[memory_key]} for m in methods
            if m.get(memory_key) is not None and m["mean_accuracy"] is not None]
    accuracies = {m["method"]: m["mean_accuracy"] for m in methods if m["mean_accuracy"] is not None}
    return rows, accuracies
