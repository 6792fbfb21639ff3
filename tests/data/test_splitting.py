"""`vqt data split`: a user's ImageFolder becomes a VTAB-1k-style task (stratified, seeded lists) that trains."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import BACKBONE, TINY
from vqt.cli.main import main
from vqt.data.lists import read_vtab_split

SIZES = {"cat": 30, "dog": 20, "fish": 10}  # unequal classes: the split must keep their proportions


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "my_pets"
    rng = np.random.default_rng(0)
    for name, count in SIZES.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i} a.png")
    return root


def split(folder: Path, *extra: str) -> int:
    return main(["data", "split", str(folder), "--train", "12", "--val", "6", *extra])


def lines(folder: Path, name: str) -> list[str]:
    return (folder / f"{name}.txt").read_text().splitlines()


def test_split_is_stratified_disjoint_and_complete(folder: Path, capsys) -> None:
    assert split(folder) == 0
    assert "next: vqt train --data-root" in capsys.readouterr().out
    train, val, test = (read_vtab_split(folder.parent, "my_pets", s) for s in ("train800", "val200", "test"))
    assert (len(train), len(val), len(test)) == (12, 6, 60 - 18)
    assert Counter(train.labels) == {0: 6, 1: 4, 2: 2} and Counter(val.labels) == {0: 3, 1: 2, 2: 1}
    paths = [{e.relpath for e in part.entries} for part in (train, val, test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert len(paths[0] | paths[1] | paths[2]) == 60  # every image in exactly one split
    assert lines(folder, "train800val200") == lines(folder, "train800") + lines(folder, "val200")
    assert train.class_names == ("cat", "dog", "fish")
    assert all(e.path.parent.name == train.class_names[e.label] for e in train.entries)  # labels follow folders


def test_split_is_seeded_and_keeps_existing_lists(folder: Path, capsys) -> None:
    assert split(folder) == 0
    first = lines(folder, "train800")
    assert split(folder) == 2  # lists already there: refused, nothing replaced
    assert "pass --overwrite" in capsys.readouterr().err
    assert split(folder, "--overwrite") == 0 and lines(folder, "train800") == first
    assert split(folder, "--overwrite", "--seed", "1") == 0 and lines(folder, "train800") != first


def test_too_few_images_is_one_line(folder: Path, capsys) -> None:
    assert main(["data", "split", str(folder), "--train", "50", "--val", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "60 images, too few" in err and not (folder / "train800.txt").exists()


def test_a_split_folder_trains_like_a_vtab_task(folder: Path, tmp_path: Path, one_thread) -> None:
    assert split(folder) == 0
    out = tmp_path / "run"
    assert main(["train", *BACKBONE, "--data-root", str(folder.parent), "--task", "my_pets", *TINY,
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "my_pets" and 0 <= summary["eval_accuracy"] <= 1


def test_a_folder_named_like_a_vtab_alias_is_the_users_task(folder: Path, tmp_path: Path, one_thread) -> None:
    """`pets` is an alias of oxford_iiit_pet; with no folder of that task under --data-root it is the user's own."""
    from vqt.data.tasks import resolve_task_list

    pets = folder.rename(folder.parent / "pets")
    assert split(pets) == 0
    assert [(t.name, t.group) for t in resolve_task_list("pets", pets.parent)] == [("pets", "Other")]
    out = tmp_path / "run"
    assert main(["train", *BACKBONE, "--data-root", str(pets.parent), "--task", "pets", *TINY,
                 "--out", str(out)]) == 0
    (pets.parent / "oxford_iiit_pet").mkdir()  # the registry's folder beside it: the alias means that task again
    assert resolve_task_list("pets", pets.parent)[0].name == "oxford_iiit_pet"
