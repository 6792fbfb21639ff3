"""Run directories: atomic writes, committed units of work, resume and overwrite rules, and user-facing OS errors.

A run is a folder; each unit of work (one grid configuration, one seed) is a sub-folder whose `result.json` is
written last, atomically: a unit with it is finished and never redone, a unit without it is wiped and restarted.
`config.yaml` says what the run is for; a rerun with another configuration is refused unless overwriting. A
finished run (its `summary.json` says complete) rerun with the same configuration raises `FinishedRun`, which
carries its summary: the commands print that run's results and exit 0; nothing is redone.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vqt.errors import VQTError, os_error_message
from vqt.io import write_atomic

log = logging.getLogger("vqt.protocol")

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
STOP_ENV = "VQT_STOP_AFTER_UNITS"  # test hook: simulate a kill after this many committed units

# Keys of a resolved configuration that do not change results (a rerun may differ in them). `precision` does
# change them: it is semantic, compared resolved ('fp32'/'bf16'), so `auto` on another kind of device is another run.
NON_SEMANTIC = frozenset({"out", "overwrite", "progress", "no_progress", "num_workers", "device", "store_dir",
                          "extract_batch", "eval_batch", "config", "tensorboard", "store_device"})
# Semantic keys added after runs were written: what a config.yaml without them meant (those runs computed in fp32
# and adapted every block).
SEMANTIC_DEFAULTS: dict[str, Any] = {"precision": "fp32", "tuned_layers": None}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (JSON has no NaN; a failed configuration's loss is recorded as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_atomic(Path(path), (json.dumps(_clean(data), indent=2, sort_keys=True) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    write_atomic(Path(path), text.encode())


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(_clean(dict(r)), sort_keys=True) + "\n" for r in records))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class FinishedRun(VQTError):
    """`RunDir.prepare` on a finished run of the same configuration: nothing to do; `summary` is its summary.json.

    A `VQTError`, so code that does not look for it still stops (with a one-line message) rather than redoing work.
    """

    def __init__(self, path: Path, kind: str, summary: dict[str, Any]) -> None:
        super().__init__(f"{path} holds a finished {kind} run of this configuration; its results are in {path} "
                         "(pass --overwrite to redo it)")
        self.path = path
        self.kind = kind
        self.summary = summary


class RunDir:
    """A run folder: its configuration, its committed units, its summary."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def prepare(self, config: Mapping[str, Any], *, overwrite: bool, kind: str) -> bool:
        """Create or reopen the run; returns True when resuming an unfinished run of the same configuration.

        Raises `FinishedRun` for a finished run of the same configuration (not overwriting), and `VQTError` for a
        run (finished or not) of another one.
        """
        semantic = json.loads(json.dumps({k: v for k, v in config.items() if k not in NON_SEMANTIC}))
        config_path = self.path / CONFIG_FILE
        if config_path.is_file():
            import yaml

            stored = yaml.safe_load(config_path.read_text()) or {}
            finished = self.is_finished()
            stored_semantic = {**{k: v for k, v in SEMANTIC_DEFAULTS.items() if k in semantic},
                               **{k: v for k, v in stored.items() if k not in NON_SEMANTIC}}
            changed = sorted(k for k in set(stored_semantic) | set(semantic)
                             if stored_semantic.get(k) != semantic.get(k))
            if overwrite:
                log.info("overwriting %s", self.path)
                shutil.rmtree(self.path)
            elif finished and not changed:
                raise FinishedRun(self.path, kind, read_json(self.path / SUMMARY_FILE))
            elif finished:
                raise VQTError(f"{self.path} holds a finished {kind} run of another configuration (differs in: "
                               f"{', '.join(changed)}); pass --overwrite to redo it or choose another --out")
            elif changed:
                raise VQTError(f"{self.path} holds an unfinished run of another configuration (differs in: "
                               f"{', '.join(changed)}); rerun with the same options to resume it, or pass "
                               "--overwrite")
            else:
                log.info("resuming the unfinished run in %s", self.path)
                write_text(config_path, to_yaml(config))
                return True
        elif self.path.exists() and not overwrite and any(  # another worker's config.yaml being written is fine
                not entry.name.startswith(f".{CONFIG_FILE}.") for entry in self.path.iterdir()):
            raise VQTError(f"{self.path} exists and is not a vqt run folder; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(config_path, to_yaml(config))
        return False

    def is_finished(self) -> bool:
        path = self.path / SUMMARY_FILE
        if not path.is_file():
            return False
        try:
            return read_json(path).get("status") == "complete"
        except (OSError, ValueError):
            return False


def unit_done(directory: Path) -> dict[str, Any] | None:
    """The committed result of a unit, or None (never run, or interrupted before its commit)."""
    path = Path(directory) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def reset_unit(directory: Path) -> None:
    """Wipe a half-written unit so it restarts from nothing."""
    if Path(directory).exists():
        shutil.rmtree(directory)
    Path(directory).mkdir(parents=True)


class StopCounter:
    """Counts committed units; with `VQT_STOP_AFTER_UNITS=N` raises KeyboardInterrupt after N (tests a kill)."""

    def __init__(self) -> None:
        value = os.environ.get(STOP_ENV)
        self.limit = int(value) if value else None
        self.count = 0

    def committed(self, units: int = 1) -> None:
        self.count += units
        if self.limit is not None and self.count >= self.limit:
            raise KeyboardInterrupt(f"{STOP_ENV}={self.limit}: stopping after {self.count} units")


F = TypeVar("F", bound=Callable[..., Any])


def user_errors(function: F) -> F:
    """Turn every OS error (disk full, permission, a file where a folder should be, ...) into a one-line `VQTError`.

    Paths come from the user (--out, --store-dir, --data-root), so an OS error is theirs to fix, not a bug.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except VQTError:
            raise
        except OSError as error:
            raise VQTError(os_error_message(error)) from error

    return wrapper  # type: ignore[return-value]


def to_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=True, default_flow_style=None)


def unit_name(config: Any) -> str:
    """The folder of one grid configuration (a `GridConfig`: lr, weight_decay) inside a task's `grid/`."""
    return f"lr{config.lr:g}_wd{config.weight_decay:g}"
