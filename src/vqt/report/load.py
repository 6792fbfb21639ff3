"""Read a `vqt sweep` run folder (layout: `vqt.protocol.sweep`) into what the report shows.

Only committed units count: a grid configuration or a seed whose `result.json` exists. A unit without it was
interrupted and will be redone by a resumed sweep, so its partial metrics are not shown. Per unit the epoch
records come from its own `metrics.jsonl`, so a run killed in the middle of a task still shows that task's
finished units (the run-level `metrics.jsonl` is only rebuilt after each task).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqt.errors import VQTError
from vqt.report import tables
from vqt.rundir import CONFIG_FILE, METRICS_FILE, RESULT_FILE, SUMMARY_FILE, read_json, read_jsonl

COMPRESSED_ADAPTER = "adapter-compressed"
PRE_LOGITS = "pre-logits"


@dataclass
class Unit:
    """One committed grid configuration or final seed: its result and its per-epoch records."""

    name: str
    lr: float
    weight_decay: float
    seed: int
    result: dict[str, Any]
    epochs: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.result.get("status") == "ok"


@dataclass
class Kept:
    """Which feature groups one seed's compressed head kept: per piece (name, kept columns, all columns)."""

    seed: int
    pieces: list[tuple[str, int, int]]

    @property
    def fraction(self) -> float:
        return sum(k for _, k, _ in self.pieces) / max(1, sum(n for _, _, n in self.pieces))


@dataclass
class TaskReport:
    name: str
    group: str
    summary: dict[str, Any] | None  # tasks/<task>/summary.json, None while the task is unfinished
    grid: list[Unit]
    finals: list[Unit]
    grid_expected: int
    seeds_expected: int
    kept: list[Kept] = field(default_factory=list)
    kept_note: str | None = None  # why kept fractions could not be read, when compression ran

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def started(self) -> bool:
        return bool(self.grid or self.finals or self.summary)

    @property
    def chosen(self) -> tuple[float, float] | None:
        if self.summary and self.summary.get("lr") is not None:
            return float(self.summary["lr"]), float(self.summary["weight_decay"])
        return None

    def progress(self) -> str:
        return (f"grid {len(self.grid)}/{self.grid_expected} configurations, "
                f"{len(self.finals)}/{self.seeds_expected} seeds")

    def row(self) -> dict[str, Any]:
        """The results-table row: the task summary's, or an 'in progress' row for an unfinished task."""
        if self.summary is not None:
            return tables.task_row(self.summary)
        status = "in progress" if self.started else "not started"
        return tables.task_row({"task": self.name, "group": self.group, "status": status,
                                "notes": [self.progress()] if self.started else []})


@dataclass
class RunReport:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    tasks: list[TaskReport]

    @property
    def finished(self) -> bool:
        return bool(self.summary) and self.summary.get("status") == "complete"  # type: ignore[union-attr]

    @property
    def method(self) -> str:
        return str((self.summary or {}).get("method") or self.config.get("method", "vqt"))

    @property
    def backbone(self) -> str:
        return str((self.summary or {}).get("backbone") or self.config.get("backbone", "?"))

    @property
    def lrs(self) -> list[float]:
        return [float(x) for x in self.config.get("lrs") or []]

    @property
    def wds(self) -> list[float]:
        return [float(x) for x in self.config.get("wds") or []]

    def rows(self) -> list[dict[str, Any]]:
        return [task.row() for task in self.tasks]

    def unfinished(self) -> str | None:
        """None for a finished run, else one sentence saying what is there."""
        if self.finished:
            return None
        done = sum(t.finished for t in self.tasks)
        parts = [f"unfinished run: {done} of {len(self.tasks)} tasks finished"]
        parts += [f"{t.name} in progress ({t.progress()})" for t in self.tasks if t.started and not t.finished]
        return "; ".join(parts) + "; the report shows what is there (rerun the same `vqt sweep` to resume)"


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except ValueError as error:
        raise VQTError(f"corrupt {path}: {error}") from error


def _config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        raise VQTError(f"no such run folder: {path}")
    if not path.is_dir():
        raise VQTError(f"{path} is a file; `vqt report` takes a `vqt sweep` run folder")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise VQTError(f"{path} is not a vqt sweep run folder (no {CONFIG_FILE}); pass the --out folder of "
                       "`vqt sweep`")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise VQTError(f"corrupt {config_path}: {error}") from error
    if not isinstance(config, dict) or "lrs" not in config or "wds" not in config:
        kind = ("a `vqt train` run folder" if isinstance(config, dict) and "lr" in config
                else "not a vqt sweep run folder")
        raise VQTError(f"{path} is {kind}; `vqt report` reports the run folders of `vqt sweep`")
    return config


def _unit(directory: Path) -> Unit | None:
    result_path = directory / RESULT_FILE
    if not result_path.is_file():
        return None
    result = _read(result_path)
    metrics = directory / METRICS_FILE
    try:
        records = read_jsonl(metrics) if metrics.is_file() else []
    except ValueError as error:
        raise VQTError(f"corrupt {metrics}: {error}") from error
    epochs = sorted((r for r in records if "epoch" in r), key=lambda r: r["epoch"])
    return Unit(directory.name, float(result.get("lr", 0.0)), float(result.get("weight_decay", 0.0)),
                int(result.get("seed", 0)), result, epochs)


def _task_names(config: dict[str, Any], summary: dict[str, Any] | None, root: Path) -> list[tuple[str, str]]:
    """(task, group) in the sweep's order: the configured list when it resolves, then any other task folder."""
    names: list[tuple[str, str]] = []
    try:
        from vqt.data.tasks import resolve_task_list

        names = [(t.name, t.group) for t in resolve_task_list(config.get("tasks", ""), config.get("data_root"))]
    except (VQTError, OSError):  # the data root may be elsewhere now; fall back on what the folder holds
        names = []
    known = {name for name, _ in names}
    for row in (summary or {}).get("rows", []):
        if row["task"] not in known:
            names.append((row["task"], row["group"]))
            known.add(row["task"])
    tasks_dir = root / "tasks"
    if tasks_dir.is_dir():
        for directory in sorted(p for p in tasks_dir.iterdir() if p.is_dir()):
            if directory.name not in known:
                from vqt.data.tasks import OTHER_GROUP

                names.append((directory.name, OTHER_GROUP))
                known.add(directory.name)
    return names


def load_run(path: str | Path) -> RunReport:
    """Everything the report shows; a `VQTError` for a folder that is no sweep run or holds no finished unit."""
    from vqt.rundir import unit_name
    from vqt.training import grid_configs

    root = Path(path)
    config = _config(root)
    summary = _read(root / SUMMARY_FILE) if (root / SUMMARY_FILE).is_file() else None
    configs = grid_configs([float(x) for x in config["lrs"]], [float(x) for x in config["wds"]],
                           [int(config.get("grid_seed", 0))])
    seeds = int(config.get("seeds", 1))
    tasks = []
    for name, group in _task_names(config, summary, root):
        tdir = root / "tasks" / name
        task_summary = _read(tdir / SUMMARY_FILE) if (tdir / SUMMARY_FILE).is_file() else None
        grid = [u for u in (_unit(tdir / "grid" / unit_name(c)) for c in configs) if u is not None]
        finals = [u for u in (_unit(tdir / "final" / f"seed{s}") for s in range(seeds)) if u is not None]
        task = TaskReport(name, (task_summary or {}).get("group", group), task_summary, grid, finals, len(configs),
                          seeds)
        read_kept(task, tdir)
        tasks.append(task)
    report = RunReport(root, config, summary, tasks)
    if not any(t.started for t in tasks):
        raise VQTError(f"{root}: the sweep has not finished any grid configuration yet; nothing to report "
                       "(rerun the same `vqt sweep` to resume it)")
    return report


# ---------------------------------------------------------------- what the compressed heads kept


def feature_pieces(config: dict[str, Any], tensors: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """The head input's pieces, in order, as (name, width): pre-logits, then one per layer.

    VQT (`vqt.methods.vqt.combine_features`): [f_final (D), O_0 .. O_{L-1}] with O_l of width Q_l·D ("concat") or
    D; Q_l is read from the saved queries. Head2Toe (`vqt.methods.head2toe`): [pre-logits (D), then per block
    every source and pool size (s²·D each)], summed per layer. Linear probing: the pre-logits only.
    """
    arch = config.get("architecture") or {}
    dim, depth = int(arch["embed_dim"]), int(arch["depth"])
    method = config.get("method", "vqt")
    kwargs = config.get("method_kwargs") or {}
    if method == "linear":
        return [(PRE_LOGITS, dim)]
    if method == "head2toe":
        from vqt.methods.head2toe import STORE_SOURCES

        if kwargs.get("target_sizes"):  # the official code's pooling: widths depend on the token count
            raise ValueError("no feature layout known for Head2Toe with target_sizes")
        sources = kwargs.get("sources") or STORE_SOURCES
        pool_sizes = kwargs.get("pool_sizes") or (1,)
        per_layer = len(sources) * sum(int(s) ** 2 for s in pool_sizes) * dim
        return [(PRE_LOGITS, dim)] + [(f"layer {i}", per_layer) for i in range(depth)]
    if method.startswith("vqt"):
        queries = [tensors[f"queries.{i}"].shape[0] for i in range(depth) if f"queries.{i}" in tensors]
        if len(queries) != depth:
            raise ValueError(f"{len(queries)} query tensors for {depth} layers")
        concat = kwargs.get("variant", "concat") == "concat"
        return [(PRE_LOGITS, dim)] + [(f"layer {i}", q * dim if concat else dim) for i, q in enumerate(queries)]
    raise ValueError(f"no feature layout known for method {method!r}")


def _head_width(adapter: Path) -> int | None:
    """Input width of the uncompressed head (a cross-check of the layout), when readable."""
    from safetensors import safe_open

    for name in ("adapter.safetensors", "trained.safetensors"):
        if (adapter / name).is_file():
            with safe_open(str(adapter / name), framework="numpy") as handle:
                names = set(handle.keys())
                for key in ("head.weight", "head.linear.weight"):
                    if key in names:
                        return int(handle.get_slice(key).get_shape()[1])
    return None


def kept_pieces(seed_dir: Path) -> list[tuple[str, int, int]]:
    """Per piece (name, kept, total) of a seed's `adapter-compressed/` (its head's `indices` buffer)."""
    from safetensors.numpy import load_file

    from vqt.checkpoint.files import TRAINED_CONFIG, TRAINED_WEIGHTS

    adapter = seed_dir / COMPRESSED_ADAPTER
    config = json.loads((adapter / TRAINED_CONFIG).read_text())
    tensors = load_file(str(adapter / TRAINED_WEIGHTS))
    if "head.indices" not in tensors:
        raise ValueError("the compressed head records no kept indices")
    pieces = feature_pieces(config, tensors)
    total = sum(width for _, width in pieces)
    width = _head_width(seed_dir / "adapter")
    if width is not None and width != total:
        raise ValueError(f"the layout gives {total} features, the uncompressed head reads {width}")
    indices = tensors["head.indices"].astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= total):
        raise ValueError(f"kept indices outside the {total} features")
    bounds = np.cumsum([0] + [w for _, w in pieces])
    counts = np.histogram(indices, bins=bounds)[0]  # bins [a, b), the last one [a, b]: b = total is no index
    return [(name, int(count), width) for (name, width), count in zip(pieces, counts, strict=True)]


def read_kept(task: TaskReport, tdir: Path) -> None:
    for unit in task.finals:
        seed_dir = tdir / "final" / unit.name
        if unit.result.get("keep") is None or not (seed_dir / COMPRESSED_ADAPTER).is_dir():
            continue
        try:
            task.kept.append(Kept(unit.seed, kept_pieces(seed_dir)))
        except (OSError, ValueError, KeyError) as error:
            task.kept_note = f"{seed_dir / COMPRESSED_ADAPTER}: {error}"
