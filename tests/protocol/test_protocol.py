"""The protocol's pieces: selection rule, chunks, tables, configuration layering, run folders, Python API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from vqt.cli.options import Option, add_options, compress_spec, queries_spec, resolve
from vqt.errors import VQTError
from vqt.protocol.setup import choose
from vqt.protocol.sweep import chunks
from vqt.report import tables
from vqt.rundir import RunDir, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def test_choose_ties_go_to_the_smaller_lr_then_wd() -> None:
    results = [
        {"lr": 1.0, "weight_decay": 0.0, "val_accuracy": 0.5},
        {"lr": 0.1, "weight_decay": 0.01, "val_accuracy": 0.5},
        {"lr": 0.1, "weight_decay": 0.0, "val_accuracy": 0.5},
        {"lr": 0.5, "weight_decay": 0.0, "val_accuracy": 0.4},
    ]
    assert choose(results) == {"lr": 0.1, "weight_decay": 0.0, "val_accuracy": 0.5}
    results.append({"lr": 1.0, "weight_decay": 0.01, "val_accuracy": 0.6})
    assert choose(results)["val_accuracy"] == 0.6


def test_chunks_are_a_fixed_partition() -> None:
    assert chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert chunks(list(range(5)), 0) == [[0, 1, 2, 3, 4]]


def test_table_group_means_and_formats() -> None:
    summaries = [
        {"task": "cifar100", "group": "Natural", "queries": 1, "lr": 0.1, "weight_decay": 0.0, "val_accuracy": 0.5,
         "test_mean": 0.6, "test_std": 0.01, "seeds_done": 5, "status": "ok", "notes": []},
        {"task": "dtd", "group": "Natural", "queries": 1, "lr": 0.1, "weight_decay": 0.0, "val_accuracy": 0.5,
         "test_mean": 0.4, "test_std": 0.0, "seeds_done": 5, "status": "ok", "notes": []},
        {"task": "eurosat", "group": "Specialized", "queries": 1, "lr": 0.1, "weight_decay": 0.0,
         "val_accuracy": 0.9, "test_mean": 0.9, "test_std": 0.0, "seeds_done": 5, "status": "ok", "notes": []},
        {"task": "kitti", "group": "Structured", "queries": 20, "lr": None, "weight_decay": None,
         "val_accuracy": None, "test_mean": None, "test_std": None, "seeds_done": 0, "status": "failed",
         "notes": ["4 of 4 grid configurations failed (non-finite loss)"]},
    ]
    rows = [tables.task_row(s) for s in summaries]
    means = tables.group_means(rows)
    assert means["Natural"] == pytest.approx(50.0) and means["Specialized"] == pytest.approx(90.0)
    assert means["Structured"] is None and means["Mean"] == pytest.approx(70.0)
    markdown = tables.markdown(rows)
    assert "| kitti | Structured | 20 | – |" in markdown and "failed (4 of 4" in markdown
    assert "60.00 ± 1.00" in markdown
    csv_text = tables.to_csv(rows)
    assert csv_text.splitlines()[0].startswith("task,group,queries,lr")
    assert "Mean,mean,,,,,70.0" in csv_text


def test_option_layers_default_file_command_line(tmp_path: Path) -> None:
    options = (Option("--epochs", 100, "epochs", type=int), Option("--lr", 0.1, "lr", type=float),
               Option("--queries", None, "Q", type=queries_spec), Option("--compress", None, "c", type=compress_spec),
               Option("--flag", False, "a switch", flag_action=True))
    parser = argparse.ArgumentParser()
    add_options(parser, options)
    (tmp_path / "c.yaml").write_text("epochs: 7\nlr: 0.5\nqueries: {svhn: 20}\ncompress: official\n")
    config = resolve(parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--lr", "0.25"]), options)
    assert config == {"epochs": 7, "lr": 0.25, "queries": {"svhn": 20}, "compress": "official", "flag": False}
    assert resolve(parser.parse_args(["--queries", "svhn=20,dtd=1", "--compress", "0.7", "--flag"]), options) == {
        "epochs": 100, "lr": 0.1, "queries": {"svhn": 20, "dtd": 1}, "compress": 0.7, "flag": True}
    assert "(default: 100)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--compress", "1.5"])


def test_run_folder_rules(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.prepare({"a": 1, "out": "x"}, overwrite=False, kind="sweep") is False
    assert run.prepare({"a": 1, "out": "y"}, overwrite=False, kind="sweep") is True  # `out` is not semantic
    with pytest.raises(VQTError, match="another configuration .*differs in: a"):
        run.prepare({"a": 2}, overwrite=False, kind="sweep")
    write_json(run.path / "summary.json", {"status": "complete"})
    with pytest.raises(VQTError, match="finished sweep run"):
        run.prepare({"a": 1}, overwrite=False, kind="sweep")
    assert run.prepare({"a": 2}, overwrite=True, kind="sweep") is False
    assert not (run.path / "summary.json").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(VQTError, match="not a vqt run folder"):
        RunDir(tmp_path / "other").prepare({}, overwrite=False, kind="train")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from vqt.data.synth import generate_task

    root = tmp_path_factory.mktemp("vtab")
    generate_task("dsprites_loc", root, n_train=16, n_val=8, n_test=16, size=32)
    return root


BASE = {"backbone": "vit_tiny_patch16_224@random", "img_size": 32, "epochs": 2, "warmup_epochs": 1,
        "batch_size": 8, "progress": False}


@pytest.mark.parametrize("method", ["linear", "head2toe"])
def test_sweep_api_head_methods(data_root: Path, tmp_path: Path, method: str) -> None:
    from vqt.checkpoint.trained import load_trained
    from vqt.protocol.sweep import run_sweep

    summary = run_sweep({**BASE, "data_root": str(data_root), "tasks": "dsprites_loc", "method": method,
                         "lrs": [0.5, 0.1], "wds": [0.0], "seeds": 2, "out": str(tmp_path / "run"),
                         "compress": "official"})
    row = summary["rows"][0]
    assert row["queries"] is None and row["seeds"] == 2 and row["compressed_mean"] is None  # dsprites_loc: Q=20
    adapter = tmp_path / "run" / "tasks" / "dsprites_loc" / "final" / "seed1" / "adapter"
    model, config = load_trained(adapter)
    assert config["method"] == method and model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    result = json.loads((adapter.parent / "result.json").read_text())
    from vqt.inference.predict import evaluate_adapter

    assert evaluate_adapter(adapter, data_root, "dsprites_loc")["accuracy"] == pytest.approx(result["test_accuracy"])


def test_train_api_online_vqt_with_augmentation_and_lora(data_root: Path, tmp_path: Path) -> None:
    from vqt.protocol.train_run import run_train

    summary = run_train({**BASE, "data_root": str(data_root), "task": "dsprites_loc", "online": True,
                         "augment": True, "queries": 2, "val_split": "val200", "out": str(tmp_path / "a")})
    assert summary["status"] == "complete" and summary["queries"] == 2
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and summary["val_accuracy"] is not None
    summary = run_train({**BASE, "data_root": str(data_root), "task": "dsprites_loc", "method": "lora",
                         "train_split": "train800", "out": str(tmp_path / "b")})
    assert (tmp_path / "b" / "adapter" / "trained_config.json").is_file()
    with pytest.raises(VQTError, match="--augment needs --online"):
        run_train({**BASE, "data_root": str(data_root), "task": "dsprites_loc", "augment": True,
                   "out": str(tmp_path / "c")})
    # the sweep trains LoRA online now (tests/protocol/test_sweep_methods.py); only compression (stored features) is
    # refused
    with pytest.raises(VQTError, match="drop --compress"):
        from vqt.protocol.sweep import run_sweep

        run_sweep({**BASE, "data_root": str(data_root), "tasks": "dsprites_loc", "method": "lora",
                   "compress": "official", "out": str(tmp_path / "d")})
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.parametrize("compress", ["official", "0.7"])
@pytest.mark.parametrize("how", [{"online": True}, {"method": "lora"}])
def test_compress_with_online_training_is_refused(data_root: Path, tmp_path: Path, compress: str, how: dict) -> None:
    """Compression retrains the head on stored features; online training has none, so it used to be skipped."""
    from vqt.protocol.train_run import run_train

    with pytest.raises(VQTError, match="drop --compress"):
        run_train({**BASE, "data_root": str(data_root), "task": "dsprites_loc", "compress": compress, **how,
                   "out": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("store_device", ["cpu"])  # cuda: refused earlier here, naming the missing CUDA device
def test_store_device_with_online_training_is_refused(data_root: Path, tmp_path: Path, store_device: str) -> None:
    """`--store-device` places a feature store; online training reads images, so it used to be ignored silently."""
    from vqt.protocol.train_run import run_train

    with pytest.raises(VQTError, match="drop --store-device"):
        run_train({**BASE, "data_root": str(data_root), "task": "dsprites_loc", "online": True,
                   "store_device": store_device, "out": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()  # refused before any work
