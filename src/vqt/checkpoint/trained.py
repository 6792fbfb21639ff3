"""Saving and loading what the protocol trained: a standard adapter for plain VQT, otherwise a
`trained_config.json` + `trained.safetensors` pair with the same checks on load (local folders; `vqt.hub`
resolves `hf-hub:` names on top of this)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from vqt.backbone.sources import create_backbone, describe, weights_fingerprint
from vqt.checkpoint.adapter import check_backbone, load_adapter, save_adapter
from vqt.checkpoint.config import read_config
from vqt.checkpoint.files import (
    ADAPTER_CONFIG,
    TRAINED_CONFIG,
    TRAINED_FORMAT,
    TRAINED_FORMAT_VERSION,
    TRAINED_WEIGHTS,
    library_version,
)
from vqt.errors import AdapterError
from vqt.io import write_atomic
from vqt.methods.feature_selection import SelectedHead
from vqt.methods.registry import create_method, get_method
from vqt.methods.vqt import VQT


def save_trained(
    model: nn.Module,
    directory: str | Path,
    *,
    method: str,
    kwargs: dict,
    backbone_spec: str,
    transform: dict | None,
    class_names: list[str] | None,
    extra: dict | None = None,
) -> Path:
    """Save what trained. A plain VQT becomes a standard adapter (`vqt.checkpoint.adapter`); any other method, or a
    compressed head, a `trained_config.json` + `trained.safetensors` pair with the same checks on load."""
    directory = Path(directory)
    extra = {"method": method, **(extra or {})}
    if isinstance(model, VQT) and isinstance(model.head, nn.Linear):
        return save_adapter(model, directory, backbone_spec=backbone_spec, transform=transform,
                            class_names=class_names, extra=extra)
    backbone = model.backbone
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    tensors.update({name: b.detach().cpu().contiguous() for name, b in model.named_buffers()
                    if name.startswith("head.")})
    weights = st_save(tensors)
    head = model.head
    num_classes = head.out_features if isinstance(head, nn.Linear) else head.linear.out_features
    config = {
        "format": TRAINED_FORMAT,
        "format_version": TRAINED_FORMAT_VERSION,
        "library_version": library_version(),
        "method": method,
        "method_kwargs": kwargs,
        "backbone": backbone_spec,
        "architecture": describe(backbone),
        "weights_fingerprint": weights_fingerprint_of(method, model),
        "img_size": describe(backbone)["img_size"],
        "transform": transform,
        "num_classes": num_classes,
        "class_names": class_names,
        "selected_head": isinstance(head, SelectedHead),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **extra,
    }
    write_atomic(directory / TRAINED_WEIGHTS, weights)
    write_atomic(directory / TRAINED_CONFIG, json.dumps(config, indent=2).encode())
    return directory


def weights_fingerprint_of(method: str, model: nn.Module) -> str | None:
    """The frozen backbone's fingerprint; None for methods that change backbone weights (nothing to compare)."""
    if get_method(method).adapts_features:
        return None
    return weights_fingerprint(model.backbone)


def load_trained(directory: str | Path, backbone: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load what `save_trained` wrote: (model in eval mode, its config)."""
    directory = Path(directory)
    if backbone is None:
        config = read_config(directory)
        if "backbone" not in config:
            raise AdapterError(f"{directory}: the adapter config names no backbone")
        backbone = create_backbone(config["backbone"], img_size=config.get("img_size"))
    if (directory / ADAPTER_CONFIG).is_file():
        model = load_adapter(directory, backbone)
        return model, read_config(directory)
    config = read_config(directory)
    data = (directory / TRAINED_WEIGHTS).read_bytes() if (directory / TRAINED_WEIGHTS).is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != config.get("weights_sha256"):
        raise AdapterError(f"adapter weights in {directory} are missing or corrupt (checksum mismatch)")
    tensors = st_load(data)
    check_backbone({**config, "weights_fingerprint": config.get("weights_fingerprint")}, backbone,
                   check_weights=config.get("weights_fingerprint") is not None)
    with torch.random.fork_rng(devices=[]):
        model = create_method(config["method"], backbone, config["num_classes"], **config["method_kwargs"])
    if config.get("selected_head"):
        model.head = SelectedHead(tensors["head.indices"], config["num_classes"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise AdapterError(f"adapter tensors do not fit the model: unexpected {unexpected[:4]}")
    return model.eval(), config
