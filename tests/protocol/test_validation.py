"""Impossible training settings are refused before any work, in one line naming the option (protocol/validation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(shapes_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(shapes_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


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
        ("train", ["--tuned-layers", "2"], "'vqt' has none to shrink"),
        ("sweep", ["--method", "linear", "--tuned-layers", "1"], "'linear' has none to shrink"),
        ("sweep", ["--method", "adaptformer", "--tuned-layers", "0"], "--tuned-layers must be >= 1, got 0"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(shapes_root: Path, tmp_path: Path, capsys, command: str,
                                                         args: list[str], message: str) -> None:
    out = tmp_path / "o"
    full = train_args(shapes_root, out, *args) if command == "train" else sweep_args(shapes_root, out, "dsprites_ori",
                                                                                   *args)
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vqt: error:") and message in err, err
    assert not out.exists()  # refused before any work


def test_impossible_settings_from_a_config_file(shapes_root: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lr: -1\nepochs: true\n")
    assert main(train_args(shapes_root, tmp_path / "o", "--config", str(config))) == 2
    assert "--lr must be > 0, got -1" in capsys.readouterr().err
    assert main(["train", *BACKBONE, "--data-root", str(shapes_root), "--task", "dsprites_ori", "--out",
                 str(tmp_path / "o"), "--config", str(config), "--lr", "0.1"]) == 2
    assert "--epochs must be an integer, got True" in capsys.readouterr().err
    # Checked after the layers: the command line (TINY sets --epochs 2) overrides the file's impossible values.
    assert main(train_args(shapes_root, tmp_path / "o", "--config", str(config), "--lr", "0.1")) == 0


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


def test_tuned_layers_beyond_the_backbone_depth_are_refused(shapes_root: Path, tmp_path: Path, capsys) -> None:
    assert main(train_args(shapes_root, tmp_path / "o", "--method", "lora", "--lr", "0.01", "--tuned-layers",
                           "13")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tuned-layers 13 is more than the 12 blocks" in err, err
