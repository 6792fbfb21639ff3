"""`vqt data split`: VTAB-1k-style list files (train800 / val200 / train800val200 / test) for a user's ImageFolder.

A user's own folder of class sub-folders then runs through every command like a VTAB-1k task
(`--data-root <parent> --task <folder>`): the grid on train800 -> val200, the final seeds on train800val200, the
test on the rest. The split is stratified and seeded: each class is shuffled, every image gets the position
(i + 0.5) / n_class within its class, and the images in order of position fill train, then val, then test, so
every prefix holds the classes in proportion to their sizes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from vqt.data.lists import CLASSES_FILE, Entry, read_image_folder
from vqt.data.registry import SPLITS
from vqt.errors import DataError
from vqt.io import write_atomic


def stratified_order(entries: list[Entry], seed: int) -> list[Entry]:
    """`entries` in an order whose every prefix is a class-proportional sample (seeded, reproducible)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(entry.label, []).append(entry)
    keyed = []
    for members in by_class.values():
        rng.shuffle(members)
        keyed += [((i + 0.5) / len(members), rng.random(), entry) for i, entry in enumerate(members)]
    return [entry for *_, entry in sorted(keyed, key=lambda item: item[:2])]


def split_image_folder(folder: str | os.PathLike[str], *, train: int = 800, val: int = 200,
                       test: int | None = None, seed: int = 0, overwrite: bool = False) -> dict[str, int]:
    """Write the four list files and classes.txt into `folder`; returns the number of images per split.

    `test=None` puts every image not in train or val into test. The list files keep their VTAB-1k names
    (train800.txt ...) whatever the counts, since every command looks for those names.
    """
    base = Path(folder)
    images = read_image_folder(base)
    existing = [name for name in (*SPLITS, CLASSES_FILE)
                if (base / (name if name == CLASSES_FILE else f"{name}.txt")).exists()]
    if existing and not overwrite:
        raise DataError(f"{base}: already holds {', '.join(existing)} (pass --overwrite to replace them)")
    if train < 1 or val < 0 or (test is not None and test < 1):
        raise DataError(f"--train must be >= 1, --val >= 0 and --test >= 1; got {train}, {val}, {test}")
    wanted = train + val + (test if test is not None else 1)
    if len(images) < wanted:
        raise DataError(f"{base}: {len(images)} images, too few for --train {train} --val {val} and "
                        f"{'--test ' + str(test) if test is not None else 'at least one test image'}")
    order = stratified_order(list(images.entries), seed)
    parts = {"train800": order[:train], "val200": order[train:train + val],
             "test": order[train + val:] if test is None else order[train + val:train + val + test]}
    return write_split(base, parts["train800"], parts["val200"], parts["test"], images.class_names or [])


def write_split(folder: str | os.PathLike[str], train: list[Entry], val: list[Entry], test: list[Entry],
                class_names: list[str]) -> dict[str, int]:
    """Write the four VTAB-1k list files (train800val200 = train + val) and classes.txt into `folder`."""
    base = Path(folder)
    parts = {"train800": train, "val200": val, "test": test, "train800val200": train + val}
    for name, entries in parts.items():
        lines = "".join(f"{entry.relpath} {entry.label}\n" for entry in entries)
        write_atomic(base / f"{name}.txt", lines.encode())
    write_atomic(base / CLASSES_FILE, "".join(f"{name}\n" for name in class_names).encode())
    return {name: len(entries) for name, entries in parts.items()}
