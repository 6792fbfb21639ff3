"""Rough edges a new user meets at the command line: a finished run rerun, impossible settings, tasks outside
VTAB-1k in the table, list options written with spaces.

Same tiny setting as tests/test_cli_protocol.py (random ViT at 32 px, 2 epochs): every test runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli_protocol import BACKBONE, TINY, sweep_args, synth
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """dsprites_ori, and `my_shapes`: a user's own task (a copy under a name outside the VTAB-1k registry)."""
    root = tmp_path_factory.mktemp("vtab")
    synth(root, "dsprites_ori")
    shutil.copytree(root / "dsprites_ori", root / "my_shapes")
    return root


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


# ---------------------------------------------------------------------- 1. a finished run rerun


def test_finished_sweep_rerun_prints_its_table(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(sweep_args(data_root, out)) == 0
    first = capsys.readouterr().out
    stamp = (out / "summary.json").stat().st_mtime_ns

    # Same options (a non-semantic one may differ): the finished run's table, exit 0, nothing redone.
    assert main(sweep_args(data_root, out, "dsprites_ori", "--device", "cpu")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "already holds this finished sweep run" in captured.out and "--overwrite" in captured.out
    assert "dsprites_ori" in first and first.strip() in captured.out  # the same table and result paths
    assert (out / "summary.json").stat().st_mtime_ns == stamp

    # Changed options: still one line, exit 2, naming what differs.
    assert main(sweep_args(data_root, out, "dsprites_ori", "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vqt: error:" in err and "Traceback" not in err
    assert "finished sweep run of another configuration (differs in: epochs)" in err


def test_finished_train_rerun_prints_its_summary(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "train"
    assert main(train_args(data_root, out)) == 0
    first = capsys.readouterr().out
    stamp = (out / "summary.json").stat().st_mtime_ns

    assert main(train_args(data_root, out, "--num-workers", "0")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "already holds this finished train run" in captured.out
    assert first.strip() in captured.out  # the same accuracy line and adapter path
    assert (out / "summary.json").stat().st_mtime_ns == stamp

    assert main(train_args(data_root, out, "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    # the finished run gave no --lr, so its lr and wd were left to be chosen on val200: both differ
    assert err.count("\n") == 1 and "finished train run of another configuration (differs in: lr, wd)" in err


def test_finished_run_python_api(data_root: Path, tmp_path: Path) -> None:
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


# ---------------------------------------------------------------------- 2. impossible settings


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("train", ["--lr", "-1"], "--lr must be > 0, got -1"),
        ("train", ["--lr", "0"], "--lr must be > 0, got 0"),
        ("train", ["--lr", "nan"], "--lr must be > 0, got nan"),
        ("train", ["--wd", "-0.1"], "--wd must be >= 0, got -0.1"),
        ("train", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
        ("train", ["--batch-size", "-8"], "--batch-size must be >= 1, got -8"),
        ("train", ["--warmup-epochs", "5"], "--warmup-epochs must lie in [0, --epochs] = [0, 2], got 5"),
        ("train", ["--warmup-epochs", "-1"], "--warmup-epochs must lie in [0, --epochs] = [0, 2], got -1"),
        ("train", ["--eval-every", "-1"], "--eval-every must be >= 1, got -1"),
        ("train", ["--query-dropout", "1"], "--query-dropout must lie in [0, 1), got 1"),
        ("train", ["--queries", "0"], "--queries must be >= 1, got 0"),
        ("train", ["--group-lasso", "-1"], "--group-lasso must be >= 0, got -1"),
        ("train", ["--num-workers", "-2"], "--num-workers must be >= 0, got -2"),
        ("train", ["--eval-batch", "0"], "--eval-batch must be >= 1, got 0"),
        ("sweep", ["--seeds", "0"], "--seeds must be >= 1, got 0"),
        ("sweep", ["--lrs", ""], "--lrs must list at least one value"),
        ("sweep", ["--lrs", "0.1,-1"], "--lrs values must be > 0, got -1"),
        ("sweep", ["--wds", "0,-0.5"], "--wds values must be >= 0, got -0.5"),
        ("sweep", ["--queries", "dsprites_ori=0"], "--queries must be >= 1, got dsprites_ori=0"),
        ("sweep", ["--query-dropout", "-0.1"], "--query-dropout must lie in [0, 1), got -0.1"),
        ("sweep", ["--epochs", "-3"], "--epochs must be >= 1, got -3"),
        ("sweep", ["--grid-chunk", "-1"], "--grid-chunk must be >= 0, got -1"),
        ("sweep", ["--extract-batch", "0"], "--extract-batch must be >= 1, got 0"),
        ("sweep", ["--img-size", "0"], "--img-size must be >= 1, got 0"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(data_root: Path, tmp_path: Path, capsys, command: str,
                                                         args: list[str], message: str) -> None:
    out = tmp_path / "o"
    full = train_args(data_root, out, *args) if command == "train" else sweep_args(data_root, out, "dsprites_ori",
                                                                                   *args)
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqt: error:") and message in err, err
    assert not out.exists()  # refused before any work


def test_impossible_settings_from_a_config_file(data_root: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lr: -1\nepochs: true\n")
    assert main(train_args(data_root, tmp_path / "o", "--config", str(config))) == 2
    assert "--lr must be > 0, got -1" in capsys.readouterr().err
    assert main(["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", "--out",
                 str(tmp_path / "o"), "--config", str(config), "--lr", "0.1"]) == 2
    assert "--epochs must be an integer, got True" in capsys.readouterr().err
    # Checked after the layers: the command line (TINY sets --epochs 2) overrides the file's impossible values.
    assert main(train_args(data_root, tmp_path / "o", "--config", str(config), "--lr", "0.1")) == 0


def test_validate_config_directly() -> None:
    from vqt.errors import VQTError
    from vqt.protocol.sweep import SWEEP_DEFAULTS
    from vqt.protocol.train_run import TRAIN_DEFAULTS
    from vqt.protocol.validation import validate_config

    validate_config(TRAIN_DEFAULTS)
    validate_config(SWEEP_DEFAULTS)
    validate_config({**SWEEP_DEFAULTS, "lrs": [1.0, 0.1], "wds": [0.0], "queries": {"svhn": 20}})
    with pytest.raises(VQTError, match=r"--wds values must be numbers, got 'x'"):
        validate_config({"wds": [0.1, "x"]})
    with pytest.raises(VQTError, match=r"--lr must be finite, got inf"):
        validate_config({"lr": float("inf")})


def test_recipe_refuses_negative_lr_and_weight_decay() -> None:
    from vqt.training.recipe import Recipe

    Recipe(lr=0.0, weight_decay=0.0)  # a zero lr is allowed in Python (a reference test trains with it)
    with pytest.raises(ValueError, match=r"lr must be >= 0 and finite, got -1"):
        Recipe(lr=-1)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0 and finite, got -0.5"):
        Recipe(weight_decay=-0.5)
    with pytest.raises(ValueError, match=r"eval_every must be >= 1, got 0"):
        Recipe(eval_every=0)


# ---------------------------------------------------------------------- 3. tasks outside VTAB-1k in the table


def _rows(*tasks: tuple[str, str, float | None]) -> list[dict]:
    from vqt.report import tables

    return [tables.task_row({"task": name, "group": group, "test_mean": mean, "test_std": 0.0, "status": "ok"})
            for name, group, mean in tasks]


def test_group_means_with_other_tasks() -> None:
    from vqt.report import tables

    vtab_only = tables.group_means(_rows(("dtd", "Natural", 0.8), ("dsprites_ori", "Structured", 0.4)))
    assert list(vtab_only) == ["Natural", "Specialized", "Structured", "Mean"]  # unchanged without Other tasks
    assert vtab_only["Mean"] == pytest.approx(60.0)

    rows = _rows(("dtd", "Natural", 0.8), ("svhn", "Natural", 0.6), ("dsprites_ori", "Structured", 0.4),
                 ("mine", "Other", 0.3), ("yours", "Other", None))
    means = tables.group_means(rows)
    assert list(means) == ["Natural", "Specialized", "Structured", "Mean", "Other", "Mean (all tasks)"]
    assert means["Natural"] == pytest.approx(70.0) and means["Structured"] == pytest.approx(40.0)
    assert means["Mean"] == pytest.approx(55.0)  # VTAB's: the mean of the group means, Other not in it
    assert means["Other"] == pytest.approx(30.0)
    assert means["Mean (all tasks)"] == pytest.approx((80 + 60 + 40 + 30) / 4)  # every task with a number

    only_other = tables.group_means(_rows(("mine", "Other", 0.3), ("yours", "Other", 0.5)))
    assert only_other["Mean"] is None and only_other["Other"] == pytest.approx(40.0)
    assert only_other["Mean (all tasks)"] == pytest.approx(40.0)

    text = tables.markdown(rows)
    assert "| Other | 30.00 |" in text and "| Mean (all tasks) | 52.50 |" in text and "| Mean | 55.00 |" in text
    csv_tasks = [line.split(",")[0] for line in tables.to_csv(rows).splitlines()[1:]]
    assert csv_tasks[-3:] == ["Mean", "Other", "Mean (all tasks)"]


def test_sweep_over_a_user_task_has_an_overall_mean(data_root: Path, tmp_path: Path, capsys) -> None:
    import csv

    out = tmp_path / "mixed"
    assert main(sweep_args(data_root, out, "dsprites_ori,my_shapes")) == 0
    assert "Mean (all tasks)" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [r["task"] for r in rows] == ["dsprites_ori", "my_shapes", "Natural", "Specialized", "Structured", "Mean",
                                         "Other", "Mean (all tasks)"]
    by_task = {r["task"]: r for r in rows}
    assert by_task["my_shapes"]["group"] == "Other"
    dsprites, mine = float(by_task["dsprites_ori"]["test_mean"]), float(by_task["my_shapes"]["test_mean"])
    assert float(by_task["Mean"]["test_mean"]) == pytest.approx(dsprites, abs=1e-3)  # VTAB: Structured only
    assert float(by_task["Other"]["test_mean"]) == pytest.approx(mine, abs=1e-3)
    assert float(by_task["Mean (all tasks)"]["test_mean"]) == pytest.approx((dsprites + mine) / 2, abs=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_means"]["Mean (all tasks)"] == pytest.approx((dsprites + mine) / 2, abs=1e-3)
    assert "| Mean (all tasks) |" in (out / "results.md").read_text()


# ---------------------------------------------------------------------- 4. list options with spaces


def _sweep_config(*argv: str, config: Path | None = None) -> dict:
    from vqt.cli import sweep
    from vqt.cli.main import build_parser
    from vqt.cli.options import resolve

    extra = ["--config", str(config)] if config is not None else []
    return resolve(build_parser().parse_args(["sweep", *extra, *argv]), sweep.OPTIONS)


def test_list_options_take_commas_and_spaces(tmp_path: Path) -> None:
    expected = {"lrs": [0.5, 0.1], "wds": [0.01, 0.0], "tasks": "dsprites_ori,clevr_count",
                "queries": {"svhn": 20, "dtd": 1}}
    for argv in (
        ["--lrs", "0.5,0.1", "--wds", "0.01,0", "--tasks", "dsprites_ori,clevr_count", "--queries", "svhn=20,dtd=1"],
        ["--lrs", "0.5", "0.1", "--wds", "0.01", "0", "--tasks", "dsprites_ori", "clevr_count", "--queries",
         "svhn=20", "dtd=1"],
        ["--lrs", "0.5,", "0.1", "--wds", "0.01 0", "--tasks", "dsprites_ori,", "clevr_count", "--queries",
         "svhn=20,", "dtd=1"],
    ):
        config = _sweep_config(*argv)
        assert {key: config[key] for key in expected} == expected, argv
    assert _sweep_config("--queries", "10")["queries"] == 10
    assert _sweep_config("--lrs", "0.5")["lrs"] == [0.5]

    # The YAML layer still works (a list, a comma or space separated string), and the command line wins.
    for text in ("lrs: [0.5, 0.1]\n", "lrs: 0.5,0.1\n", "lrs: 0.5 0.1\n"):
        (tmp_path / "c.yaml").write_text(text)
        assert _sweep_config(config=tmp_path / "c.yaml")["lrs"] == [0.5, 0.1], text
    assert _sweep_config("--lrs", "1", "0.25", config=tmp_path / "c.yaml")["lrs"] == [1.0, 0.25]


def test_list_option_help_and_errors(capsys) -> None:
    from vqt.cli.main import build_parser

    parser = build_parser()
    sweep = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["sweep"]
    helps = {flag: action.help for action in sweep._actions for flag in action.option_strings}
    for flag in ("--lrs", "--wds", "--tasks", "--queries"):
        assert "several values separated by commas and/or spaces" in helps[flag], flag
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    assert "separated by commas and/or spaces" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--lrs", "0.5", "abc"])
    assert "argument --lrs: expected numbers separated by commas" in capsys.readouterr().err


def test_space_separated_grid_on_the_command_line(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "spaces"
    args = sweep_args(data_root, out)
    args[args.index("--lrs") + 1: args.index("--lrs") + 2] = ["1.0", "0.1"]
    args[args.index("--wds") + 1: args.index("--wds") + 2] = ["0.001", "0"]
    assert main(args) == 0
    assert len(list((out / "tasks" / "dsprites_ori" / "grid").glob("*/result.json"))) == 4
    capsys.readouterr()
    # The same run as the comma spelling: rerun that way, it is this finished run.
    assert main(sweep_args(data_root, out)) == 0
    assert "already holds this finished sweep run" in capsys.readouterr().out


def test_python_api_refuses_impossible_settings_before_any_work(tmp_path: Path) -> None:
    """`run_train`/`run_sweep` validate like the CLI (they are what the CLI calls)."""
    from vqt.errors import VQTError
    from vqt.protocol.sweep import run_sweep
    from vqt.protocol.train_run import run_train

    with pytest.raises(VQTError, match="--lr must be > 0"):
        run_train({"task": "dsprites_ori", "lr": -1.0, "out": str(tmp_path / "t")})
    with pytest.raises(VQTError, match="--lrs"):
        run_sweep({"tasks": "dsprites_ori", "lrs": [0.5, -0.1], "out": str(tmp_path / "s")})
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_official_compression_on_a_user_task_is_refused(data_root: Path, tmp_path: Path, capsys,
                                                        command: str) -> None:
    """'official' is VTAB-1k's per-task rule: on a folder outside the registry it once did nothing, silently."""
    out = tmp_path / "o"
    args = (["train", *train_args(data_root, out, "--compress", "official")[1:]] if command == "train"
            else sweep_args(data_root, out, "dsprites_ori,my_shapes", "--compress", "official"))
    if command == "train":
        args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compress official" in err and "'my_shapes'" in err, err
    assert not out.exists()  # refused before any work


def test_a_keep_fraction_compresses_a_user_task(data_root: Path, tmp_path: Path, capsys) -> None:
    args = train_args(data_root, tmp_path / "o", "--compress", "0.5")
    args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["keep"] == 0.5 and 0 <= summary["compressed_eval_accuracy"] <= 1
    assert (tmp_path / "o" / "adapter-compressed").is_dir()
