"""`vqt train` with no --lr: the lr (and wd) chosen on train800 -> val200 from the method's grid, the way the sweep
chooses, never on the evaluated split; refused in one line where it cannot be chosen.

Tiny setting of tests/protocol/test_end_to_end.py (random ViT at 32 px, 2 epochs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, synth
from vqt.cli.main import main
from vqt.methods import registry
from vqt.methods.spec import MethodGrid

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_GRID = MethodGrid((1.0, 0.1, 0.01), (0.001, 0.0), "test grid")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab")
    synth(root, "dsprites_ori")
    return root


def train(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


@pytest.mark.parametrize("method", ["vqt", "linear"])
def test_unset_lr_is_the_best_val200_configuration_of_the_grid(data_root: Path, tmp_path: Path, monkeypatch,
                                                               method: str) -> None:
    monkeypatch.setitem(registry.METHODS, method, replace(registry.METHODS[method], grid=SMALL_GRID))
    assert main(train(data_root, tmp_path / "auto", "--method", method, "--queries", "1")) == 0
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    selection = summary["lr_selection"]
    assert selection["on"] == ["train800", "val200"]
    assert [(r["lr"], r["weight_decay"]) for r in selection["grid"]] == [
        (lr, wd) for lr in SMALL_GRID.lrs for wd in SMALL_GRID.wds]

    # the reference: each configuration trained on its own with --lr/--wd on train800, validated on val200
    reference = []
    for lr in SMALL_GRID.lrs:
        for wd in SMALL_GRID.wds:
            out = tmp_path / f"lr{lr}_wd{wd}"
            assert main(train(data_root, out, "--method", method, "--queries", "1", "--lr", str(lr), "--wd", str(wd),
                              "--train-split", "train800", "--val-split", "val200", "--eval-split", "val200")) == 0
            reference.append((json.loads((out / "summary.json").read_text())["eval_accuracy"], -lr, -wd))
    for row, (acc, _, _) in zip(selection["grid"], reference, strict=True):
        assert row["val_accuracy"] == pytest.approx(acc, abs=1e-9)
    best = max(reference)
    assert (summary["lr"], summary["weight_decay"]) == (-best[1], -best[2])
    assert summary["eval_split"] == "test" and summary["eval_accuracy"] is not None

    # the chosen configuration is then trained on train800val200 exactly as if it had been given
    assert main(train(data_root, tmp_path / "given", "--method", method, "--queries", "1",
                      "--lr", str(summary["lr"]), "--wd", str(summary["weight_decay"]))) == 0
    given = json.loads((tmp_path / "given" / "summary.json").read_text())
    assert given["eval_accuracy"] == summary["eval_accuracy"] and "lr_selection" not in given


def test_unset_lr_with_a_given_wd_searches_the_lrs_only(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(registry.METHODS, "linear", replace(registry.METHODS["linear"], grid=SMALL_GRID))
    assert main(train(data_root, tmp_path / "run", "--method", "linear", "--wd", "0.05")) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {r["weight_decay"] for r in summary["lr_selection"]["grid"]} == {0.05}
    assert summary["weight_decay"] == 0.05 and len(summary["lr_selection"]["grid"]) == len(SMALL_GRID.lrs)


def test_given_lr_without_wd_keeps_the_old_default(data_root: Path, tmp_path: Path) -> None:
    assert main(train(data_root, tmp_path / "run", "--method", "linear", "--lr", "0.1")) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["lr"], summary["weight_decay"]) == (0.1, 1e-4) and "lr_selection" not in summary


def test_unset_lr_refused_on_the_evaluated_split(data_root: Path, tmp_path: Path, capsys) -> None:
    assert main(train(data_root, tmp_path / "run", "--eval-split", "val200")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it would be chosen on val200, the --eval-split" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(("method", "extra", "lr"), [("vqt", ["--online"], 0.25), ("lora", [], 0.002)])
def test_unset_lr_online_is_the_middle_of_the_method_grid(data_root: Path, tmp_path: Path, caplog, method, extra,
                                                          lr) -> None:
    assert main(train(data_root, tmp_path / "run", "--method", method, "--queries", "1", *extra)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["lr"], summary["weight_decay"]) == (lr, 1e-4) and "lr_selection" not in summary
    assert f"--lr not given: an online run uses the middle of the {method} grid, lr {lr:g}" in caplog.text


def test_unset_lr_refused_without_a_val200_list(data_root: Path, tmp_path: Path, capsys) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(data_root / "dsprites_ori", root / "dsprites_ori")
    (root / "dsprites_ori" / "val200.txt").unlink()
    assert main(train(root, tmp_path / "run", "--val-split", "", "--train-split", "train800val200")) == 2
    err = capsys.readouterr().err
    assert "has no val200.txt; pass --lr, or make the lists with `vqt data split`" in err and err.count("\n") == 1
