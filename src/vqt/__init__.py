"""Visual Query Tuning (Tu, Mai, Chao, CVPR 2023) for timm Vision Transformers.

The public API lives here::

    import vqt

    backbone = vqt.create_backbone("offline:dinov2_s14")
    model = vqt.VQT(backbone, num_classes=10)

Names are imported on first use (PEP 562 module `__getattr__`), so `import vqt` and the `vqt` command stay quick:
torch, timm and the training code load only when something that needs them is touched.

The distribution is `visual-query-tuning` (`pip install visual-query-tuning`); the import name and the command are
`vqt`. The unrelated PyPI project `vqt` (a Variable-Q transform) installs a top-level `vqt` package too, so the two
overwrite each other's files: when another installed distribution provides `vqt`, importing this package raises
an ImportError that names it and says how to fix it (`_check_no_other_vqt`). The version is the installed
distribution's (`vqt.__version__`, read from its metadata on first use).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# The name on PyPI. The version lives in pyproject.toml only and is read back from the installed metadata.
DISTRIBUTION = "visual-query-tuning"
UNKNOWN_VERSION = "0+unknown"  # running from a source tree that was never installed
# This library's summary: before its first release it was installed under the name `vqt`, and such a leftover
# (an old editable install, a src/vqt.egg-info) provides the same files: not a clash.
_SUMMARY_PREFIX = "Visual Query Tuning"


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _provides_vqt(info: str) -> bool:
    """Whether the distribution whose metadata folder is `info` installs a top-level `vqt` (what
    `importlib.metadata.packages_distributions` reads: top_level.txt, else the files in RECORD)."""
    top_level = _read(os.path.join(info, "top_level.txt"))
    if top_level is not None:
        return "vqt" in top_level.split()
    try:
        with open(os.path.join(info, "RECORD"), "rb") as file:
            record = b"\n" + file.read()
    except OSError:
        return False
    return b"\nvqt/" in record or b"\nvqt.py," in record


def _metadata(info: str) -> dict[str, str]:
    text = _read(os.path.join(info, "METADATA")) or _read(os.path.join(info, "PKG-INFO")) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line:  # the headers end at the first blank line
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def other_vqt_distributions() -> list[tuple[str, str, str, str]]:
    """(name, version, summary, metadata folder) of every distribution on `sys.path` other than this one that
    installs a top-level `vqt` package. A scan of the metadata folders only (no `importlib.metadata`, which
    `import vqt` would otherwise pay for): ~10 ms."""
    found = []
    for entry in dict.fromkeys(sys.path):
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, a missing folder
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = _normalise(name.rsplit(".", 1)[0].split("-")[0])
            if dist == _normalise(DISTRIBUTION):
                continue
            info = os.path.join(entry or ".", name)
            if not os.path.isdir(info) or not _provides_vqt(info):
                continue
            meta = _metadata(info)
            summary = meta.get("Summary", "")
            if dist == "vqt" and summary.startswith(_SUMMARY_PREFIX):
                continue  # this library under its pre-release name
            found.append((meta.get("Name", dist), meta.get("Version", "?"), summary, info))
    return found


def clash_message(others: list[tuple[str, str, str, str]]) -> str:
    named = "; ".join(f"{name} {version}" + (f" ({summary})" if summary else "") + f" at {info}"
                      for name, version, summary, info in others)
    uninstall = " ".join(dict.fromkeys(name for name, *_ in others))
    return (f"the import name 'vqt' is also installed by another distribution: {named}. It and Visual Query Tuning "
            f"(distribution {DISTRIBUTION!r}) both install a top-level 'vqt' package and overwrite each other's "
            f"files, so they cannot share an environment. Fix: pip uninstall {uninstall}, then pip install "
            f"--force-reinstall --no-deps {DISTRIBUTION} (from a checkout: pip install --force-reinstall --no-deps "
            f"-e .), or use a separate virtual environment.")


class DistributionClash(ImportError):
    """Another installed distribution provides the top-level `vqt` package (PyPI's unrelated `vqt`)."""


def _check_no_other_vqt() -> None:
    others = other_vqt_distributions()
    if others:
        raise DistributionClash(clash_message(others), name="vqt")


_check_no_other_vqt()

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # backbones
    "create_backbone": "vqt.backbone.sources",
    "BackboneTap": "vqt.backbone.tap",
    # data
    "ImageList": "vqt.data.lists",
    "ImageListDataset": "vqt.data.dataset",
    "read_list": "vqt.data.lists",
    "read_image_folder": "vqt.data.lists",
    "read_vtab_split": "vqt.data.lists",
    "build_transform": "vqt.data.transforms",
    # features
    "FeatureStore": "vqt.features.store",
    "extract_features": "vqt.features.extract",
    "open_store": "vqt.features.store",
    "request_meta": "vqt.features.extract",
    # methods
    "VQT": "vqt.methods.vqt",
    "create_method": "vqt.methods.registry",
    "method_names": "vqt.methods.registry",
    # training
    "Recipe": "vqt.training.recipe",
    "GridConfig": "vqt.training.grid",
    "grid_configs": "vqt.training.grid",
    "train_cached": "vqt.training.trainers",
    "train_online": "vqt.training.trainers",
    "train_grid": "vqt.training.grid",
    "evaluate_store": "vqt.training.evaluate",
    # adapters
    "save_adapter": "vqt.hub.push",
    "load_adapter": "vqt.hub.fetch",
    # the protocol (what the CLI runs)
    "run_train": "vqt.protocol.train_run",
    "run_sweep": "vqt.protocol.sweep",
    "predict": "vqt.inference.predict",
    "evaluate_adapter": "vqt.inference.predict",
    "save_trained": "vqt.checkpoint.trained",
    "load_trained": "vqt.hub.fetch",
    # serving: many tasks from one backbone pass
    "load_adapters": "vqt.inference.multitask",
    "MultiTaskModel": "vqt.inference.multitask",
    "predict_tasks": "vqt.inference.multitask",
    # errors
    "VQTError": "vqt.errors",
    "BackboneError": "vqt.errors",
    "AdapterError": "vqt.errors",
    "DataError": "vqt.errors",
    "StoreError": "vqt.errors",
}

__all__ = sorted(_EXPORTS)


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = globals()[name] = _installed_version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vqt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})

