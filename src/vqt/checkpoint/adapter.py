"""Adapters: what VQT learned (queries, combiner weights, head) plus a small JSON config, nothing else.

An adapter is a folder with `adapter_config.json` and `adapter.safetensors` (the shape HF peft uses), a few
hundred KiB instead of a whole backbone. Loading re-creates the backbone from the recorded spelling (or takes
one the caller made) and refuses, naming what differs, any backbone, width, depth, Q or file that does not fit.
Local folders only: `vqt.hub` resolves `hf-hub:` names and pushes, on top of this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from vqt.backbone.sources import create_backbone, describe, weights_fingerprint
from vqt.checkpoint.config import read_adapter_config
from vqt.checkpoint.files import (
    ADAPTER_CONFIG,
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    ADAPTER_WEIGHTS,
    library_version,
)
from vqt.errors import AdapterError
from vqt.io import write_atomic
from vqt.methods.vqt import VQT


def save_adapter(
    model: VQT,
    directory: str | Path,
    *,
    backbone_spec: str,
    transform: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save queries + head + config. `backbone_spec` is the spelling `create_backbone` understands."""
    directory = Path(directory)
    num_classes = model.head.out_features
    if class_names is not None and len(class_names) != num_classes:
        raise AdapterError(f"{len(class_names)} class names given for a head with {num_classes} classes")
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    weights = save(tensors)
    config = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "library_version": library_version(),
        "backbone": backbone_spec,
        "architecture": describe(model.backbone),
        "weights_fingerprint": weights_fingerprint(model.backbone),
        "img_size": describe(model.backbone)["img_size"],
        "transform": transform,
        "num_queries": model.num_queries,
        "variant": model.variant,
        "query_dropout": model.query_dropout.p,
        "num_classes": num_classes,
        "class_names": class_names,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **(extra or {}),
    }
    write_atomic(directory / ADAPTER_WEIGHTS, weights)
    write_atomic(directory / ADAPTER_CONFIG, json.dumps(config, indent=2).encode())  # written last: the commit
    return directory


def _load_tensors(directory: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = directory / ADAPTER_WEIGHTS
    if not path.is_file():
        raise AdapterError(f"adapter weights missing: {path}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != config.get("weights_sha256"):
        raise AdapterError(f"corrupt adapter weights {path}: checksum does not match {ADAPTER_CONFIG}")
    try:
        return load(data)
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"corrupt adapter weights {path}: {error}") from error


def check_backbone(config: dict[str, Any], backbone: nn.Module, *, check_weights: bool = True) -> None:
    """Refuse a backbone that is not the one the adapter was trained on, saying what differs."""
    recorded, actual = config["architecture"], describe(backbone)
    differences = [
        f"{key}: adapter {recorded.get(key)} vs backbone {actual[key]}"
        for key in ("embed_dim", "depth", "num_heads", "patch_size", "num_prefix_tokens")
        if recorded.get(key) != actual[key]
    ]
    if differences:
        raise AdapterError(
            f"adapter was trained on {config['backbone']!r}; this backbone differs: " + "; ".join(differences)
        )
    if check_weights and weights_fingerprint(backbone) != config["weights_fingerprint"]:
        raise AdapterError(
            f"adapter was trained on {config['backbone']!r} but this backbone has other weights "
            "(same architecture, different fingerprint)"
        )


def load_adapter(
    directory: str | Path,
    backbone: nn.Module | None = None,
    *,
    num_queries: int | list[int] | None = None,
    check_weights: bool = True,
) -> VQT:
    """Rebuild a trained VQT: the recorded backbone (or `backbone`), then queries and head from the file.

    `num_queries`, if given, is what the caller expects; an adapter with another Q is refused.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    if num_queries is not None:
        expected = [num_queries] * len(config["num_queries"]) if isinstance(num_queries, int) else num_queries
        if list(expected) != config["num_queries"]:
            raise AdapterError(f"adapter has Q={config['num_queries']} per layer, expected {list(expected)}")
    tensors = _load_tensors(directory, config)
    if backbone is None:
        backbone = create_backbone(config["backbone"], img_size=config.get("img_size"))
    check_backbone(config, backbone, check_weights=check_weights)
    model = VQT(
        backbone,
        num_classes=config["num_classes"],
        num_queries=config["num_queries"],
        variant=config["variant"],
        query_dropout=config["query_dropout"],
    )
    expected_shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    found_shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected_shapes != found_shapes:
        differing = sorted(set(expected_shapes.items()) ^ set(found_shapes.items()))
        raise AdapterError(f"adapter tensors do not fit its config: {differing[:4]}")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in tensors:
                parameter.copy_(tensors[name])
    model.adapter_config = config
    return model.eval()
