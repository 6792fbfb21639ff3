"""Built-in tasks: same seed -> same bytes; labels re-derive from the stored parameters and from the pixels."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vqt.cli import data as data_cli
from vqt.cli.main import COMMAND_MODULES
from vqt.data.lists import read_vtab_split
from vqt.data.synth import SYNTH_TASKS, dsprites, generate_task, get_synth_task, image_rng, label_from_params
from vqt.errors import DataError

SMALL = {"n_train": 6, "n_val": 3, "n_test": 3, "size": 32}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("task", list(SYNTH_TASKS))
def test_same_seed_same_bytes(task: str, tmp_path: Path) -> None:
    first = _files(generate_task(task, tmp_path / "a", seed=3, **SMALL))
    second = _files(generate_task(task, tmp_path / "b", seed=3, **SMALL))
    other = _files(generate_task(task, tmp_path / "c", seed=4, **SMALL))
    assert first == second
    assert len(first) == 12 + 7  # images + 4 lists, classes, metadata, task.json
    assert first["images/train/000000.png"] != other["images/train/000000.png"]


@pytest.mark.parametrize("task", list(SYNTH_TASKS))
def test_labels_rederive_from_parameters(task: str, tmp_path: Path) -> None:
    folder = generate_task(task, tmp_path, seed=1, **SMALL)
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12
    listed = {}
    for split in ("train800", "val200", "test"):
        images = read_vtab_split(tmp_path, task, split)  # class count from classes.txt
        assert images.num_classes == get_synth_task(task).num_classes
        listed.update({entry.relpath: entry.label for entry in images.entries})
    combined = read_vtab_split(tmp_path, task, "train800val200")
    assert len(combined) == 9
    for record in records:
        assert label_from_params(task, record["params"]) == record["label"] == listed[record["path"]]
        # the stored parameters are the ones the image was drawn from
        rng = image_rng(1, task, record["split"], record["index"])
        assert get_synth_task(task).sample(rng) == record["params"]


def test_count_and_distance_labels_mean_what_they_say() -> None:
    count, dist = get_synth_task("clevr_count"), get_synth_task("clevr_dist")
    for index in range(20):
        params = count.sample(image_rng(0, "clevr_count", "test", index))
        assert 3 <= len(params["objects"]) <= 10 and count.label(params) == len(params["objects"]) - 3
        params = dist.sample(image_rng(0, "clevr_dist", "test", index))
        nearest = min(obj["z"] for obj in params["objects"])
        edges = np.geomspace(2.5, 10.0, 7)
        assert edges[dist.label(params)] <= nearest < edges[dist.label(params) + 1]


def _moments(image: np.ndarray) -> tuple[float, float, float]:
    """Centre x (pixels) and principal-axis angle (radians, mod pi) of a grey blob."""
    weights = image.astype(np.float64)
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
    total = weights.sum()
    cx, cy = (weights * xs).sum() / total, (weights * ys).sum() / total
    mu20 = (weights * (xs - cx) ** 2).sum()
    mu02 = (weights * (ys - cy) ** 2).sum()
    mu11 = (weights * (xs - cx) * (ys - cy)).sum()
    return cx, cy, 0.5 * math.atan2(2 * mu11, mu20 - mu02) % math.pi


def test_dsprites_pixels_match_their_labels() -> None:
    """Centroid x of squares/ellipses gives the x bin; the ellipse's principal axis gives its orientation."""
    size = 128
    loc, ori = get_synth_task("dsprites_loc"), get_synth_task("dsprites_ori")
    checked = 0
    for index in range(40):
        params = loc.sample(image_rng(0, "dsprites_loc", "train", index))
        if params["shape"] == "heart":
            continue
        cx, _, _ = _moments(np.asarray(loc.render(params, size))[..., 0])
        assert abs(cx / size - params["x"]) < 0.5 / size
        checked += 1
        params = ori.sample(image_rng(0, "dsprites_ori", "train", index))
        if params["shape"] == "ellipse":
            _, _, angle = _moments(np.asarray(ori.render(params, size))[..., 0])
            difference = (angle - params["angle"] + math.pi / 2) % math.pi - math.pi / 2
            assert abs(difference) < math.radians(3)
    assert checked > 10
    for shape, period in dsprites.SYMMETRY_PERIOD.items():
        params = {"shape": shape, "angle": period + 1e-9, "x": 0.5, "y": 0.5, "scale": 0.1}
        assert dsprites.orientation_label(params) == 0  # orientation is modulo the symmetry period


def test_prefix_does_not_depend_on_split_sizes(tmp_path: Path) -> None:
    small = _files(generate_task("clevr_count", tmp_path / "a", n_train=2, n_val=1, n_test=1, size=32))
    large = _files(generate_task("clevr_count", tmp_path / "b", n_train=4, n_val=1, n_test=2, size=32))
    assert small["images/train/000001.png"] == large["images/train/000001.png"]


def test_existing_folder_is_reused_or_refused(tmp_path: Path) -> None:
    folder = generate_task("dsprites_loc", tmp_path, **SMALL)
    marker = folder / "images" / "train" / "000000.png"
    stamp = marker.stat().st_mtime_ns
    assert generate_task("dsprites_loc", tmp_path, **SMALL) == folder and marker.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="already exists"):
        generate_task("dsprites_loc", tmp_path, **{**SMALL, "size": 48})
    generate_task("dsprites_loc", tmp_path, overwrite=True, **{**SMALL, "size": 48})
    assert json.loads((folder / "task.json").read_text())["size"] == 48
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_bad_requests() -> None:
    with pytest.raises(DataError, match="did you mean 'dsprites_ori'"):
        get_synth_task("dsprite_ori")
    with pytest.raises(DataError, match="--test must be at least 1"):
        generate_task("dsprites_ori", "unused", n_test=0)


def _run_cli(argv: list[str]) -> int:
    """`vqt data ...` through its own parser (the full CLI imports every sub-command, which is slow)."""
    parser = argparse.ArgumentParser(prog="vqt")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_synth(tmp_path: Path) -> None:
    assert "data" in COMMAND_MODULES
    args = ["data", "synth", "dsprites_ori,clevr_dist", "--out", str(tmp_path), "--train", "2", "--val", "1"]
    assert _run_cli([*args, "--test", "1", "--size", "32", "--seed", "5"]) == 0
    assert (tmp_path / "dsprites_ori" / "train800val200.txt").read_text().count("\n") == 3
    assert (tmp_path / "clevr_dist" / "classes.txt").read_text().count("\n") == 6
    with pytest.raises(DataError, match="unknown synthetic task 'clever_count'"):
        _run_cli(["data", "synth", "clever_count", "--out", str(tmp_path)])
