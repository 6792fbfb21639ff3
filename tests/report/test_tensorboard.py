"""`--tensorboard DIR` on `vqt sweep` / `vqt train`: one TensorBoard run per configuration, holding exactly the
per-epoch values of metrics.jsonl; a clear one-line refusal when tensorboard is not installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, sweep_args
from vqt.cli.main import main
from vqt.rundir import STOP_ENV

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCH_TAGS = {"train/loss": "train_loss", "train/lr": "lr_value", "val/accuracy": "val_accuracy"}

NO_TENSORBOARD = "tensorboard is not installed (pip install 'visual-query-tuning[tensorboard]')"


def read_runs(root: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run folder relative to root: {tag: [(step, value), ...]}} read back with TensorBoard's own reader."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    runs = {}
    for events in sorted(root.rglob("events.out.tfevents.*")):
        name = events.parent.relative_to(root).as_posix()
        assert name not in runs, f"{name}: more than one event file"
        accumulator = event_accumulator.EventAccumulator(str(events.parent))
        accumulator.Reload()
        runs[name] = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
                      for tag in accumulator.Tags()["scalars"]}
    return runs


def expected_runs(out: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What each unit's metrics.jsonl says, as TensorBoard scalars (null values are not written)."""
    runs = {}
    for metrics in sorted((out / "tasks").glob("*/*/*/metrics.jsonl")):
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        last = max(r["epoch"] for r in records if "epoch" in r)
        scalars: dict[str, list[tuple[int, float]]] = {}
        for r in records:
            if "epoch" in r:
                for tag, key in EPOCH_TAGS.items():
                    if r[key] is not None:
                        scalars.setdefault(tag, []).append((r["epoch"], r[key]))
            elif r.get("kind") == "test":
                for tag, key in (("test/accuracy", "test_accuracy"),
                                 ("test/compressed_accuracy", "compressed_test_accuracy")):
                    if r[key] is not None:
                        scalars.setdefault(tag, []).append((last, r[key]))
        runs[metrics.parent.relative_to(out / "tasks").as_posix()] = scalars
    return runs


def assert_same(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for run, scalars in expected.items():
        assert sorted(actual[run]) == sorted(scalars), run
        for tag, points in scalars.items():
            assert [step for step, _ in actual[run][tag]] == [step for step, _ in points], (run, tag)
            # TensorBoard stores float32: equal to the JSON value up to float32 rounding
            assert [v for _, v in actual[run][tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7)


def test_sweep_writes_one_run_per_configuration(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    out, board = tmp_path / "run", tmp_path / "tb"
    assert main(sweep_args(data_root, out, "dsprites_ori", "--tensorboard", str(board))) == 0
    runs = read_runs(board)
    assert sorted(runs) == ["dsprites_ori/final/seed0", "dsprites_ori/final/seed1",
                            "dsprites_ori/grid/lr0.1_wd0", "dsprites_ori/grid/lr0.1_wd0.001",
                            "dsprites_ori/grid/lr1_wd0", "dsprites_ori/grid/lr1_wd0.001"]
    assert sorted(runs["dsprites_ori/grid/lr1_wd0"]) == ["train/loss", "train/lr", "val/accuracy"]
    assert sorted(runs["dsprites_ori/final/seed0"]) == ["test/accuracy", "train/loss", "train/lr"]
    assert [step for step, _ in runs["dsprites_ori/grid/lr1_wd0"]["train/loss"]] == [1, 2]
    assert_same(runs, expected_runs(out))
    # The run folder records where its curves went (the option changes no result: a resume may drop or add it).
    assert f"tensorboard: {board}" in (out / "config.yaml").read_text()


def test_resumed_sweep_adds_tensorboard_for_units_done_before(data_root: Path, tmp_path: Path,  # noqa: F811
                                                              monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    out, board = tmp_path / "run", tmp_path / "tb"
    args = sweep_args(data_root, out, "dsprites_ori", "--grid-chunk", "1")
    monkeypatch.setenv(STOP_ENV, "3")  # killed after three committed units, without --tensorboard
    assert main(args) == 130
    monkeypatch.delenv(STOP_ENV)
    assert main([*args, "--tensorboard", str(board)]) == 0  # resumes: --tensorboard is not a different run
    runs = read_runs(board)
    assert len(runs) == 6
    assert_same(runs, expected_runs(out))


def test_train_writes_its_run(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    out, board = tmp_path / "one", tmp_path / "tb"
    assert main(["train", *BACKBONE, "--data-root", str(data_root), "--task", "clevr_count", "--lr", "0.1",
                 "--wd", "0.001", "--val-split", "val200", *TINY, "--out", str(out),
                 "--tensorboard", str(board)]) == 0
    runs = read_runs(board)
    assert list(runs) == ["clevr_count/train/lr0.1_wd0.001_seed0"]
    scalars = runs["clevr_count/train/lr0.1_wd0.001_seed0"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    for tag, key in EPOCH_TAGS.items():
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in epochs], rel=1e-6)
    evaluation = next(r for r in records if r.get("kind") == "eval")
    assert scalars["test/accuracy"] == [(2, pytest.approx(evaluation["accuracy"], rel=1e-6))]


def test_missing_tensorboard_is_one_clear_line(data_root: Path, tmp_path: Path, monkeypatch,  # noqa: F811
                                               capsys) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    out = tmp_path / "run"
    assert main(sweep_args(data_root, out, "dsprites_ori", "--tensorboard", str(tmp_path / "tb"))) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("vqt: error: ")
    assert "pip install 'visual-query-tuning[tensorboard]'" in error
    assert not out.exists()  # refused before anything was written
    assert main(["train", *BACKBONE, "--data-root", str(data_root), "--task", "clevr_count", *TINY,
                 "--out", str(tmp_path / "one"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "pip install 'visual-query-tuning[tensorboard]'" in capsys.readouterr().err
