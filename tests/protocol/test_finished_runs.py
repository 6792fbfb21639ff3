"""A finished run rerun with the same configuration prints its results and exits 0; nothing is redone.

Same tiny setting as tests/protocol/test_end_to_end.py (random ViT at 32 px, 2 epochs): every test runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(shapes_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(shapes_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


def test_finished_sweep_rerun_prints_its_table(shapes_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(sweep_args(shapes_root, out)) == 0
    first = capsys.readouterr().out
    stamp = (out / "summary.json").stat().st_mtime_ns

    # Same options (a non-semantic one may differ): the finished run's table, exit 0, nothing redone.
    assert main(sweep_args(shapes_root, out, "dsprites_ori", "--device", "cpu")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "already holds this finished sweep run" in captured.out and "--overwrite" in captured.out
    assert "dsprites_ori" in first and first.strip() in captured.out  # the same table and result paths
    assert (out / "summary.json").stat().st_mtime_ns == stamp

    # Changed options: still one line, exit 2, naming what differs.
    assert main(sweep_args(shapes_root, out, "dsprites_ori", "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vqt: error:" in err and "Traceback" not in err
    assert "finished sweep run of another configuration (differs in: epochs)" in err


def test_finished_train_rerun_prints_its_summary(shapes_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "train"
    assert main(train_args(shapes_root, out)) == 0
    first = capsys.readouterr().out
    stamp = (out / "summary.json").stat().st_mtime_ns

    assert main(train_args(shapes_root, out, "--num-workers", "0")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "already holds this finished train run" in captured.out
    assert first.strip() in captured.out  # the same accuracy line and adapter path
    assert (out / "summary.json").stat().st_mtime_ns == stamp

    assert main(train_args(shapes_root, out, "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    # the finished run gave no --lr, so its lr and wd were left to be chosen on val200: both differ
    assert err.count("\n") == 1 and "finished train run of another configuration (differs in: lr, wd)" in err


def test_finished_run_python_api(shapes_root: Path, tmp_path: Path) -> None:
    """`prepare` tells "finished, same configuration" apart (FinishedRun, a VQTError carrying the summary)."""
    from vqt.errors import VQTError
    from vqt.rundir import FinishedRun, RunDir, write_json

    run = RunDir(tmp_path / "r")
    assert run.prepare({"a": 1, "out": "x"}, overwrite=False, kind="sweep") is False
    write_json(run.path / "summary.json", {"status": "complete", "rows": []})
    with pytest.raises(FinishedRun, match="finished sweep run") as caught:
        run.prepare({"a": 1, "out": "y"}, overwrite=False, kind="sweep")
    assert caught.value.summary == {"status": "complete", "rows": []} and isinstance(caught.value, VQTError)
    with pytest.raises(VQTError, match="another configuration .*differs in: a") as caught:
        run.prepare({"a": 2}, overwrite=False, kind="sweep")
    assert not isinstance(caught.value, FinishedRun)
    assert json.loads((run.path / "summary.json").read_text())["status"] == "complete"
