"""Write a synthetic task to disk as a VTAB-1k task folder (PNG images, the four list files, classes.txt).

Layout of ``<out>/<task>/``: ``images/{train,val,test}/NNNNNN.png``, ``train800.txt``, ``val200.txt``,
``train800val200.txt`` (train then val), ``test.txt``, ``classes.txt``, ``metadata.jsonl`` (one line per image:
split, index, path, label, and the scene parameters the label is derived from) and ``task.json`` (the request).
The list-file names are the VTAB-1k ones whatever the split sizes; ``task.json`` holds the real counts.
The folder is built under a temporary name and renamed when complete, so an interrupted run leaves no
half-written task behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vqt.data.lists import CLASSES_FILE
from vqt.data.synth.tasks import get_synth_task
from vqt.errors import DataError

GENERATOR_VERSION = 1
TASK_FILE = "task.json"
METADATA_FILE = "metadata.jsonl"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_TEST = 1000
PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless whatever the level


def image_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of split sizes and of the other tasks."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, zlib.crc32(task.encode()), SPLIT_CODES[split], index])
    )


def generate_task(
    task: str,
    out_dir: str | Path,
    n_train: int = 800,
    n_val: int = 200,
    n_test: int = DEFAULT_TEST,
    size: int = 224,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> Path:
    """Generate `task` into ``out_dir/<task>/`` and return that folder.

    An existing folder made by the same request is kept as it is; a different one needs `overwrite`.
    `progress` is called with the number of images just written (e.g. a tqdm bar's ``update``).
    """
    spec = get_synth_task(task)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in counts.items():
        if count < 1:
            raise DataError(f"--{split} must be at least 1, got {count}")
    if size < 16:
        raise DataError(f"image size must be at least 16 pixels, got {size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    request = {
        "task": spec.name,
        "description": spec.description,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "splits": counts,
        "num_classes": spec.num_classes,
    }
    root = Path(out_dir)
    target = root / spec.name
    if target.exists():
        if _same_request(target, request):
            if progress is not None:
                progress(sum(counts.values()))
            return target
        if not overwrite:
            raise DataError(
                f"{target} already exists and was not made by this request; pass overwrite (--overwrite) to replace it"
            )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=root))
    try:
        _write(spec.name, staging, counts, size, seed, progress)
        (staging / TASK_FILE).write_text(json.dumps(request, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _same_request(target: Path, request: dict[str, Any]) -> bool:
    try:
        return json.loads((target / TASK_FILE).read_text()) == request
    except (OSError, ValueError):
        return False


def _write(
    task: str,
    folder: Path,
    counts: dict[str, int],
    size: int,
    seed: int,
    progress: Callable[[int], Any] | None,
) -> None:
    spec = get_synth_task(task)
    lines: dict[str, list[str]] = {}
    with (folder / METADATA_FILE).open("w") as metadata:
        for split, count in counts.items():
            (folder / "images" / split).mkdir(parents=True)
            lines[split] = []
            for index in range(count):
                params = spec.sample(image_rng(seed, spec.name, split, index))
                label = spec.label(params)
                relpath = f"images/{split}/{index:06d}.png"
                spec.render(params, size).save(
                    folder / relpath, format="PNG", compress_level=PNG_COMPRESS_LEVEL
                )
                lines[split].append(f"{relpath} {label}\n")
                record = {"split": split, "index": index, "path": relpath, "label": label, "params": params}
                metadata.write(json.dumps(record, sort_keys=True) + "\n")
                if progress is not None:
                    progress(1)
    list_files = {
        "train800.txt": lines["train"],
        "val200.txt": lines["val"],
        "train800val200.txt": lines["train"] + lines["val"],
        "test.txt": lines["test"],
    }
    for name, content in list_files.items():
        (folder / name).write_text("".join(content))
    (folder / CLASSES_FILE).write_text("".join(f"{name}\n" for name in spec.class_names))
