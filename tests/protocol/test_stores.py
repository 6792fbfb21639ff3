"""Store reuse in the protocol: train800val200 assembled from train800 + val200, and test from a store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import read_csv, sweep_args
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
    from vqt.protocol.stores import task_store

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


def _train_store_meta(stores: Path) -> dict:
    return json.loads((stores / "dsprites_ori" / "train800val200" / "meta.json").read_text())


def test_trainval_is_not_assembled_from_stores_of_another_request(
    data_root: Path, tmp_path: Path  # noqa: F811
) -> None:
    """train800/val200 made with one backbone, dtype and transform must not become the train800val200 store of
    a request for another backbone, dtype and transform (this trained silently on the wrong features)."""
    stores = tmp_path / "stores"
    for split in ("train800", "val200"):
        assert main(["extract", "--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--data-root",
                     str(data_root), "--task", "dsprites_ori", "--split", split, "--transform", "official",
                     "--dtype", "float32", "--out", str(stores / "dsprites_ori" / split),
                     "--no-progress"]) == 0
    out = tmp_path / "train"
    assert main(["train", "--backbone", "deit_tiny_patch16_224@random", "--img-size", "32", "--data-root",
                 str(data_root), "--task", "dsprites_ori", "--epochs", "1", "--warmup-epochs", "0",
                 "--batch-size", "8", "--lr", "0.1", "--no-progress", "--store-dir", str(stores), "--out",
                 str(out)]) == 0  # --lr given: an unset one would be chosen on these (mismatched) train800/val200
    meta = _train_store_meta(stores)
    assert meta["backbone"] == "deit_tiny_patch16_224@random" and meta["dtype"] == "float16"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transform"] == meta["transform"] and summary["transform"]["name"] != "official"
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["transform"] == meta["transform"]


def test_trainval_assembly_refuses_a_half_written_store_of_another_request(
    data_root: Path, tmp_path: Path  # noqa: F811
) -> None:
    from vqt.backbone.sources import create_backbone
    from vqt.data.transforms import build_transform
    from vqt.errors import StoreError
    from vqt.protocol.stores import task_store

    stores = tmp_path / "stores"
    backbone = create_backbone("vit_tiny_patch16_224@random", img_size=32)
    transform, description = build_transform("backbone", backbone, img_size=32)

    def store(split: str, **options):
        return task_store(backbone, backbone_spec="vit_tiny_patch16_224@random", data_root=data_root,
                          task="dsprites_ori", split=split, transform=transform, transform_description=description,
                          store_dir=stores, progress=False, **options)

    for split in ("train800", "val200"):
        store(split)
    target = stores / "dsprites_ori" / "train800val200"
    target.mkdir(parents=True)
    (target / "meta.json").write_text(json.dumps({"format_version": 1, "backbone": "someone-else", "dtype": "float32"}))
    with pytest.raises(StoreError, match="backbone"):
        store("train800val200")
    assert json.loads((target / "meta.json").read_text())["backbone"] == "someone-else"  # left as it was
    assert store("train800val200", overwrite=True).meta["backbone"] == "vit_tiny_patch16_224@random"


def test_images_regenerated_in_place_make_the_store_stale(tmp_path: Path) -> None:
    """The list lines stay the same but the images change (e.g. `vqt data synth` at another --size)."""
    root = tmp_path / "data"
    assert main(["data", "synth", "dsprites_ori", "--out", str(root), "--train", "8", "--val", "4", "--test", "4",
                 "--size", "32"]) == 0
    args = ["extract", "--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--data-root", str(root),
            "--task", "dsprites_ori", "--split", "train800", "--out", str(tmp_path / "s"), "--no-progress"]
    assert main(args) == 0
    lines = (root / "dsprites_ori" / "train800.txt").read_text()
    assert main(["data", "synth", "dsprites_ori", "--out", str(root), "--train", "8", "--val", "4", "--test", "4",
                 "--size", "40", "--overwrite"]) == 0
    assert (root / "dsprites_ori" / "train800.txt").read_text() == lines  # same list, other images
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
