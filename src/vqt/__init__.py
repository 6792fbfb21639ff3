"""Visual Query Tuning (Tu, Mai, Chao, CVPR 2023) for timm Vision Transformers.

The public API lives here::

    import vqt

    backbone = vqt.create_backbone("offline:dinov2_s14")
    model = vqt.VQT(backbone, num_classes=10)

Names are imported on first use (PEP 562 module `__getattr__`), so `import vqt` and the `vqt` command stay quick:
torch, timm and the training code load only when something that needs them is touched.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "train_cached": "vqt.training.cached",
    "train_online": "vqt.training.cached",
    "train_grid": "vqt.training.grid",
    "evaluate_store": "vqt.training.cached",
    # adapters
    "save_adapter": "vqt.adapters",
    "load_adapter": "vqt.adapters",
    # the protocol (what the CLI runs)
    "run_train": "vqt.protocol.single",
    "run_sweep": "vqt.protocol.sweep",
    "predict": "vqt.protocol.predict",
    "evaluate_adapter": "vqt.protocol.predict",
    "save_trained": "vqt.protocol.models",
    "load_trained": "vqt.protocol.models",
    # errors
    "VQTError": "vqt.errors",
    "BackboneError": "vqt.errors",
    "AdapterError": "vqt.errors",
    "DataError": "vqt.errors",
    "StoreError": "vqt.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vqt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

