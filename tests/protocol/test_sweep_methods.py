"""`vqt sweep --method M` for every method of the registry: online methods (fine-tuning, BitFit, VPT, LoRA,
AdaptFormer, vqt-concat, vqt+X) train from images one configuration per chunk, with the protocol, run folder,
resume and tables of the store methods; each configuration starts from the pristine backbone; per-method grids.

Tiny random ViT at 32 px, 16/8/16 images, 2 lrs x 1 wd, 2 seeds, 2 epochs: seconds per method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import BACKBONE, TINY, read_csv
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

ONLINE_METHODS = ["finetune", "bitfit", "vpt-shallow", "vpt-deep", "lora", "adaptformer", "vqt-concat", "vqt+lora",
                  "vqt+adaptformer", "vqt+vpt-deep"]
GRID = ["--lrs", "0.01,0.001", "--wds", "0", "--seeds", "2"]


def method_args(data_root: Path, out: Path, method: str, *extra: str) -> list[str]:  # noqa: F811
    return ["sweep", *BACKBONE, "--data-root", str(data_root), "--tasks", "dsprites_ori", "--method", method,
            *GRID, *TINY, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def lora_run(data_root: Path, tmp_path_factory) -> Path:  # noqa: F811
    """The uninterrupted LoRA sweep (shared by the end-to-end and the resume tests)."""
    out = tmp_path_factory.mktemp("lora") / "run"
    assert main(method_args(data_root, out, "lora")) == 0
    return out


def check_run(out: Path, method: str) -> None:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "results.md", "results.csv"):
        assert (out / name).is_file(), name
    assert not (out / "stores").exists()  # online methods read images, no feature store is extracted
    row = read_csv(out / "results.csv")[0]
    assert row["task"] == "dsprites_ori" and row["status"] == "ok" and row["seeds"] == "2", row
    assert float(row["lr"]) in (0.01, 0.001) and float(row["weight_decay"]) == 0.0
    assert 0.0 <= float(row["test_mean"]) <= 100.0
    tdir = out / "tasks" / "dsprites_ori"
    assert sorted(p.name for p in (tdir / "grid").iterdir()) == ["lr0.001_wd0", "lr0.01_wd0"]
    for seed in (0, 1):
        result = json.loads((tdir / "final" / f"seed{seed}" / "result.json").read_text())
        assert result["status"] == "ok" and result["keep"] is None
        assert (tdir / "final" / f"seed{seed}" / "adapter").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == method


def test_lora_sweep_end_to_end(data_root: Path, lora_run: Path) -> None:  # noqa: F811
    from vqt.checkpoint.trained import load_trained
    from vqt.inference.predict import evaluate_adapter

    check_run(lora_run, "lora")
    adapter = lora_run / "tasks" / "dsprites_ori" / "final" / "seed1" / "adapter"
    model, config = load_trained(adapter)
    assert config["method"] == "lora" and model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    result = json.loads((adapter.parent / "result.json").read_text())
    assert evaluate_adapter(adapter, data_root, "dsprites_ori")["accuracy"] == pytest.approx(result["test_accuracy"])


@pytest.mark.parametrize("method", [m for m in ONLINE_METHODS if m != "lora"])
def test_every_online_method_sweeps(data_root: Path, tmp_path: Path, method: str) -> None:  # noqa: F811
    out = tmp_path / "run"
    assert main(method_args(data_root, out, method)) == 0
    check_run(out, method)


@pytest.mark.parametrize(("stop_after", "where"), [(1, "after the 1st of 2 grid units"),
                                                   (3, "after the 1st of 2 seeds")])
def test_killed_online_sweep_resumes_to_the_uninterrupted_results(
    data_root: Path, lora_run: Path, tmp_path: Path, monkeypatch, stop_after: int, where: str,  # noqa: F811
) -> None:
    out = tmp_path / "run"
    args = method_args(data_root, out, "lora")
    monkeypatch.setenv("VQT_STOP_AFTER_UNITS", str(stop_after))
    assert main(args) == 130, where
    monkeypatch.delenv("VQT_STOP_AFTER_UNITS")
    assert len(list(out.glob("tasks/dsprites_ori/*/*/result.json"))) == stop_after, where
    assert main(args) == 0, where
    assert (out / "results.csv").read_text() == (lora_run / "results.csv").read_text(), where
    assert len(list(out.glob("tasks/dsprites_ori/*/*/result.json"))) == 4  # 2 grid units + 2 seeds


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_configurations_do_not_leak_into_each_other(data_root: Path, method: str) -> None:  # noqa: F811
    """Config A alone == config A after config B: every configuration starts from the pristine backbone."""
    from vqt.backbone.sources import create_backbone
    from vqt.data.tasks import make_dataset, read_split
    from vqt.data.transforms import build_transform
    from vqt.protocol.fitting import make_recipe, train_online_configs
    from vqt.training import GridConfig

    backbone = create_backbone("vit_tiny_patch16_224@random", img_size=32)
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    transform, _ = build_transform("backbone", backbone, img_size=32)
    dataset = make_dataset(read_split(data_root, "dsprites_ori", "train800"), transform)
    recipe = make_recipe(batch_size=8, epochs=2, warmup_epochs=1)
    a, b = GridConfig(0.01, 0.0, 0), GridConfig(0.02, 1e-3, 1)
    alone = train_online_configs(method, backbone, 16, {}, dataset, [a], recipe)[0]
    after = train_online_configs(method, backbone, 16, {}, dataset, [b, a], recipe)[1]
    assert alone.history.train_loss == after.history.train_loss
    trained_a, trained_b = alone.model.state_dict(), after.model.state_dict()
    assert trained_a.keys() == trained_b.keys()
    assert all(torch.equal(trained_a[k], trained_b[k]) for k in trained_a)
    assert any(not torch.equal(trained_a[f"backbone.{k}"], v) for k, v in pristine.items()
               if f"backbone.{k}" in trained_a) or method != "finetune"  # fine-tuning did change its copy
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in pristine.items())  # the shared one did not


def test_method_default_grids_when_no_lrs(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    from vqt.cli.options import add_options, resolve
    from vqt.cli.sweep import OPTIONS
    from vqt.methods.registry import METHODS, method_grid
    from vqt.protocol.sweep import Sweep
    from vqt.training import LR_GRID, WD_GRID

    parser = argparse.ArgumentParser()
    add_options(parser, OPTIONS)
    config = resolve(parser.parse_args(["--method", "finetune", "--data-root", str(data_root), "--tasks",
                                        "dsprites_ori", "--out", str(tmp_path / "run")]), OPTIONS)
    assert config["lrs"] is None and config["wds"] is None  # unset on the command line: the method decides
    sweep = Sweep(config)
    assert sweep.config["lrs"] == [0.005, 0.001, 5e-4, 1e-4] == list(METHODS["finetune"].grid.lrs)
    assert sweep.config["wds"] == [0.01, 1e-3, 1e-4, 0.0]
    base = {"data_root": str(data_root), "tasks": "dsprites_ori", "out": str(tmp_path / "run")}
    assert Sweep({**base, "method": "vqt"}).config["lrs"] == list(LR_GRID)  # VQT's own grid, as before
    assert Sweep({**base, "method": "vqt"}).config["wds"] == list(WD_GRID)
    assert Sweep({**base, "method": "lora"}).config["lrs"] == list(method_grid("lora").lrs)
    assert Sweep({**base, "method": "vqt+lora"}).config["lrs"] == list(method_grid("lora").lrs)
    overridden = Sweep({**base, "method": "lora", "lrs": [0.3], "wds": [0.0]}).config
    assert overridden["lrs"] == [0.3] and overridden["wds"] == [0.0]
    from vqt.methods.registry import method_names

    for name in method_names():  # every registry method has a grid with a stated source
        grid = method_grid(name)
        assert grid.lrs and grid.wds and grid.source


@pytest.mark.parametrize("extra", [["--compress", "0.7"], ["--compress", "official"], ["--test-store"]])
def test_store_only_options_refused_for_online_methods(data_root: Path, tmp_path: Path, capsys,  # noqa: F811
                                                       extra: list[str]) -> None:
    out = tmp_path / "run"
    assert main(method_args(data_root, out, "lora", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --" in err and "lora" in err
    assert not out.exists()


@pytest.mark.parametrize("method", ["vpt-deep", "adaptformer"])
def test_a_shrunk_method_sweeps_and_its_adapters_reload_shrunk(data_root: Path, tmp_path: Path,  # noqa: F811
                                                               method: str) -> None:
    """`--tuned-layers 1` reaches the builder, the saved adapter config and the reloaded model."""
    from vqt.checkpoint.trained import load_trained
    from vqt.inference.predict import evaluate_adapter

    out = tmp_path / "run"
    assert main(method_args(data_root, out, method, "--tuned-layers", "1")) == 0
    check_run(out, method)
    adapter = out / "tasks" / "dsprites_ori" / "final" / "seed0" / "adapter"
    model, config = load_trained(adapter)
    assert config["method_kwargs"] == {"tuned_layers": 1}
    depth = len(model.backbone.blocks)
    blocks = {int(n.split("blocks.")[1].split(".")[0]) for n, p in model.named_parameters()
              if p.requires_grad and "blocks." in n}
    assert blocks == ({depth - 1} if method == "adaptformer" else set())
    if method == "vpt-deep":
        assert model.prompts.shape[0] == 1 and model.first_block == depth - 1
    result = json.loads((adapter.parent / "result.json").read_text())
    assert evaluate_adapter(adapter, data_root, "dsprites_ori")["accuracy"] == pytest.approx(result["test_accuracy"])
