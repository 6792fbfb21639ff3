"""Store reuse in the protocol: train800val200 assembled from train800 + val200, and test from a store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli_protocol import data_root, read_csv, sweep_args  # noqa: F401 (fixture)
from vqt.cli.main import main
from vqt.features import open_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_assembled_trainval_store_equals_an_extracted_one(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    common = ["--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--data-root", str(data_root),
              "--task", "dsprites_ori", "--no-progress"]
    for split in ("train800", "val200"):
        assert main(["extract", *common, "--split", split, "--out", str(tmp_path / "s" / "dsprites_ori" / split)]) == 0
    assert main(["extract", *common, "--split", "train800val200", "--out", str(tmp_path / "extracted")]) == 0
    extracted = open_store(tmp_path / "extracted")

    from vqt.backbone.sources import create_backbone
    from vqt.data.transforms import build_transform
    from vqt.protocol.data import task_store

    backbone = create_backbone("vit_tiny_patch16_224@random", img_size=32)
    transform, description = build_transform("backbone", backbone, img_size=32)
    assembled = task_store(backbone, backbone_spec="vit_tiny_patch16_224@random", data_root=data_root,
                           task="dsprites_ori", split="train800val200", transform=transform,
                           transform_description=description, store_dir=tmp_path / "s", progress=False)
    assert assembled.path == tmp_path / "s" / "dsprites_ori" / "train800val200"
    assert {k: v for k, v in assembled.meta.items()} == extracted.meta
    np.testing.assert_allclose(np.asarray(assembled.tokens, np.float32), np.asarray(extracted.tokens, np.float32),
                               atol=1e-3)
    assert (assembled.labels == extracted.labels).all()


def test_test_store_gives_the_streamed_accuracies(data_root: Path, tmp_path: Path) -> None:  # noqa: F811
    streamed, stored = tmp_path / "streamed", tmp_path / "stored"
    assert main(sweep_args(data_root, streamed, "dsprites_ori", "--method", "vqt")) == 0
    assert main(sweep_args(data_root, stored, "dsprites_ori", "--method", "vqt", "--test-store")) == 0
    assert (stored / "stores" / "dsprites_ori" / "test").is_dir()
    a, b = read_csv(streamed / "results.csv"), read_csv(stored / "results.csv")
    assert a == b
    seeds = json.loads((stored / "tasks" / "dsprites_ori" / "summary.json").read_text())["seeds"]
    assert len(seeds) == 2
