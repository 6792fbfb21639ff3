"""End to end through `vqt.cli.main.main`: synthetic data -> sweep -> predict/eval, resume, and user errors.

Tiny random ViT at 32 px, 16/8/16 images, a 2x2 grid, 2 seeds, 2-3 epochs: every test runs in seconds.
"""

from __future__ import annotations

import errno
import json
import statistics
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, read_csv, sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_synth_sweep_predict_end_to_end(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(sweep_args(data_root, out, "dsprites_ori,clevr_count", "--compress", "0.7")) == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "results.md", "results.csv"):
        assert (out / name).is_file(), name
    for task in ("dsprites_ori", "clevr_count"):
        assert len(list((out / "tasks" / task / "grid").glob("*/result.json"))) == 4
        for seed in (0, 1):
            unit = out / "tasks" / task / "final" / f"seed{seed}"
            assert (unit / "adapter" / "adapter_config.json").is_file()
            assert (unit / "adapter-compressed" / "trained_config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"

    # Table structure: a row per task, then the three groups and their mean.
    rows = read_csv(out / "results.csv")
    assert [r["task"] for r in rows] == ["dsprites_ori", "clevr_count", "Natural", "Specialized", "Structured", "Mean"]
    markdown = (out / "results.md").read_text()
    for text in ("| Task |", "test (mean ± std)", "compressed (mean ± std)", "| Structured |", "| Mean |"):
        assert text in markdown

    # The numbers in the table are the ones in the run's metrics.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows[:2]:
        grid = [m for m in metrics if m["task"] == row["task"] and m["phase"] == "grid"]
        last = {}
        for m in grid:
            last[(m["lr"], m["weight_decay"])] = m  # epochs in order: the last one wins
        best = max(last.values(), key=lambda m: (m["val_accuracy"], -m["lr"], -m["weight_decay"]))
        assert float(row["lr"]) == best["lr"] and float(row["weight_decay"]) == best["weight_decay"]
        assert float(row["val_accuracy"]) == pytest.approx(100 * best["val_accuracy"], abs=1e-3)
        tests = [m for m in metrics if m["task"] == row["task"] and m.get("kind") == "test"]
        assert len(tests) == 2 and all(m["lr"] == best["lr"] for m in tests)
        accuracies = [m["test_accuracy"] for m in tests]
        assert float(row["test_mean"]) == pytest.approx(100 * statistics.fmean(accuracies), abs=1e-3)
        assert float(row["test_std"]) == pytest.approx(100 * statistics.pstdev(accuracies), abs=1e-3)
        compressed = [m["compressed_test_accuracy"] for m in tests]
        assert float(row["compressed_mean"]) == pytest.approx(100 * statistics.fmean(compressed), abs=1e-3)
    structured = statistics.fmean(float(r["test_mean"]) for r in rows[:2])
    assert float(rows[4]["test_mean"]) == pytest.approx(structured, abs=1e-3)
    assert float(rows[5]["test_mean"]) == pytest.approx(structured, abs=1e-3)

    # The saved adapter reproduces its recorded test accuracy, and predicts class names.
    adapter = out / "tasks" / "dsprites_ori" / "final" / "seed0" / "adapter"
    capsys.readouterr()
    assert main(["eval", str(adapter), "--data-root", str(data_root), "--task", "dsprites_ori", "--json",
                 "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    seed0 = next(m for m in metrics if m["task"] == "dsprites_ori" and m.get("kind") == "test" and m["seed"] == 0)
    assert evaluated["accuracy"] == pytest.approx(seed0["test_accuracy"])
    images = data_root / "dsprites_ori" / "images" / "test"
    assert main(["predict", str(adapter), str(images), "--top-k", "3", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    names = (data_root / "dsprites_ori" / "classes.txt").read_text().split()
    assert len(predictions) == 16
    for item in predictions:
        assert len(item["predictions"]) == 3
        assert all(p["class"] in names for p in item["predictions"])
        scores = [p["score"] for p in item["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    # --precision bf16 really computes in bf16 (scores move by bf16 rounding, the format stays).
    assert main(["predict", str(adapter), str(images), "--top-k", "3", "--json", "--precision", "bf16"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert [item["path"] for item in low] == [item["path"] for item in predictions]
    moved = max(abs(a["score"] - b["score"]) for x, y in zip(low, predictions, strict=True)
                for a, b in zip(x["predictions"], y["predictions"], strict=True) if a["index"] == b["index"])
    assert 0 < moved < 0.1
    assert main(["eval", str(adapter), "--data-root", str(data_root), "--task", "dsprites_ori", "--json",
                 "--no-progress", "--precision", "bf16"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["accuracy"] - evaluated["accuracy"]) <= 0.25
    compressed_adapter = adapter.parent / "adapter-compressed"
    assert main(["predict", str(compressed_adapter), str(images / "000000.png")]) == 0
    assert "000000.png" in capsys.readouterr().out

    # `vqt info` describes runs and both adapter formats.
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"
    assert main(["info", str(compressed_adapter), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "vqt" and info["selected_head"] and info["keep_fraction"] == 0.7

    # A finished run is not redone: rerun with the same options, it prints its table and succeeds.
    assert main(sweep_args(data_root, out, "dsprites_ori,clevr_count", "--compress", "0.7")) == 0
    assert "already holds this finished sweep run" in capsys.readouterr().out


def test_killed_sweep_resumes(data_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    extra = ("--grid-chunk", "1")
    reference = tmp_path / "uninterrupted"
    assert main(sweep_args(data_root, reference, "dsprites_ori", *extra)) == 0

    out = tmp_path / "resumed"
    monkeypatch.setenv("VQT_STOP_AFTER_UNITS", "3")
    assert main(sweep_args(data_root, out, "dsprites_ori", *extra)) == 130  # "killed" after 3 grid configurations
    monkeypatch.delenv("VQT_STOP_AFTER_UNITS")
    task = out / "tasks" / "dsprites_ori"
    done = sorted(task.glob("grid/*/result.json"))
    assert len(done) == 3 and not (out / "summary.json").exists()
    stamps = {path: path.stat().st_mtime_ns for path in done}
    # A unit that was being written when the run died: no result.json, some debris.
    unfinished = task / "grid" / "lr0.1_wd0"  # the 4th configuration (lr-major order) never committed
    assert not (unfinished / "result.json").exists()
    unfinished.mkdir(parents=True, exist_ok=True)
    (unfinished / "debris.tmp").write_text("half")

    assert main(sweep_args(data_root, out, "dsprites_ori", *extra)) == 0
    assert {path: path.stat().st_mtime_ns for path in done} == stamps  # finished work reused, not redone
    assert not (unfinished / "debris.tmp").exists()  # the unfinished unit restarted cleanly
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    assert (out / "results.md").read_text() == (reference / "results.md").read_text()

    # Another configuration in the same folder is refused while unfinished/finished.
    assert main(sweep_args(data_root, out, "dsprites_ori", "--grid-chunk", "2")) == 2
    assert "finished sweep run of another configuration" in capsys.readouterr().err


def test_nan_loss_marks_configuration_failed(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nan"
    args = sweep_args(data_root, out, "dsprites_ori")
    args[args.index("--lrs") + 1] = "1e38,0.1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("vqt: error:") == 1 and "2 of 4 grid configurations failed" in err
    results = json.loads((out / "tasks" / "dsprites_ori" / "grid" / "lr1e+38_wd0" / "result.json").read_text())
    assert results["status"] == "failed" and "non-finite" in results["failure"]
    row = read_csv(out / "results.csv")[0]
    assert float(row["lr"]) == 0.1 and row["test_mean"] != "" and "failed" in row["notes"]
    assert "failed" in (out / "results.md").read_text()


def test_train_nan_loss_is_one_clear_error(data_root: Path, tmp_path: Path, capsys) -> None:
    rc = main(["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", *TINY, "--lr", "1e38",
               "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite training loss" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--tasks", "not_a_task"], "unknown VTAB-1k task 'not_a_task'"),
        (["sweep", "--tasks", "dsprites_ori", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--task", "dsprites_ori", "--backbone", "not_a_vit@random"], "unknown timm architecture"),
        (["sweep", "--tasks", "dsprites_ori", "--epochs", "1", "--warmup-epochs", "5"], "invalid training settings"),
    ],
)
def test_user_errors(data_root: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    full = [*args[:1], *BACKBONE, "--data-root", str(data_root), "--out", str(tmp_path / "o"), "--no-progress",
            *args[1:]]
    if "--backbone" in args:
        full = [*args[:1], "--data-root", str(data_root), "--out", str(tmp_path / "o"), "--no-progress", *args[1:]]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_dataset_root_without_list_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "root" / "dsprites_ori").mkdir(parents=True)
    assert main(["sweep", *BACKBONE, "--data-root", str(tmp_path / "root"), "--tasks", "dsprites_ori",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no list files train800.txt" in capsys.readouterr().err
    assert main(["sweep", *BACKBONE, "--data-root", str(tmp_path / "missing"), "--tasks", "dsprites_ori"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_store_for_another_backbone(data_root: Path, tmp_path: Path, capsys) -> None:
    stores = tmp_path / "stores"
    assert main(["extract", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", "--split",
                 "train800val200", "--out", str(stores / "dsprites_ori" / "train800val200"), "--no-progress"]) == 0
    rc = main(["train", "--backbone", "deit_tiny_patch16_224@random", "--img-size", "32", "--data-root",
               str(data_root), "--task", "dsprites_ori", *TINY, "--store-dir", str(stores),
               "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "made for a different request" in err and "backbone" in err and "Traceback" not in err
    assert "--overwrite-stores" in err


def test_no_space_left(data_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import vqt.rundir as rundir

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rundir, "write_atomic", full)
    rc = main(["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", *TINY,
               "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device" in err and "Traceback" not in err


def test_config_file_and_overrides(data_root: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 3\nwarmup-epochs: 1\nbatch_size: 8\nlr: 0.5\nmethod: linear\n")
    out = tmp_path / "t"
    assert main(["train", "--config", str(config), *BACKBONE, "--data-root", str(data_root), "--task",
                 "dsprites_ori", "--lr", "0.25", "--no-progress", "--out", str(out)]) == 0
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 3 and resolved["lr"] == 0.25 and resolved["method"] == "linear"
    assert resolved["wd"] == 1e-4  # the built-in default where neither file nor command line says
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "epoch" in m] == [1, 2, 3]
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--task", "dsprites_ori"]) == 2
    assert "unknown option(s)" in capsys.readouterr().err


def test_help_shows_defaults(capsys) -> None:
    for command in ("sweep", "train", "extract"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "(default:" in text and "--config" in text
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 100)" in text and "(default: 5)" in text


def test_sweep_places_each_training_store_once_not_per_grid_chunk(data_root: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A resident store (`--store-device cuda`) is copied to the device once per task and split, however many
    grid chunks read it. Stood in for on the CPU: the placement resolves to resident, made on the CPU."""
    from vqt.protocol import sweep
    from vqt.training.feeding import ResidentStore

    made: list[str] = []

    def place(store, placement, device):
        assert placement == "cuda"
        made.append(str(store.path))
        return ResidentStore(store, "cpu")

    monkeypatch.setattr(sweep, "resolve_store_device", lambda choice, nbytes, device: "cuda")
    monkeypatch.setattr(sweep, "place_store", place)
    assert main(sweep_args(data_root, tmp_path / "run", "dsprites_ori", "--grid-chunk", "1")) == 0
    assert len(made) == len(set(made)) == 3, made  # train800, val200, train800val200: each once (4 chunks)
