"""Adapters: round trip, and every refusal names what differs."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_models import tiny_vit
from vqt.backbone.sources import create_backbone
from vqt.checkpoint.adapter import load_adapter, save_adapter
from vqt.checkpoint.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from vqt.errors import AdapterError
from vqt.methods.vqt import VQT

SPEC = "tiny-test-vit"  # not a real spelling: these tests always hand the backbone in


def trained_adapter(tmp_path, num_queries=2, variant="weighted"):
    model = VQT(tiny_vit("dinov2_ls_reg"), num_classes=4, num_queries=num_queries, variant=variant)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(torch.randn_like(parameter))
    save_adapter(model, tmp_path / "adapter", backbone_spec=SPEC, class_names=["a", "b", "c", "d"])
    return model.eval(), tmp_path / "adapter"


def test_round_trip_gives_identical_logits(tmp_path) -> None:
    model, path = trained_adapter(tmp_path)
    loaded = load_adapter(path, backbone=tiny_vit("dinov2_ls_reg"))
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(images), loaded(images))
    assert loaded.adapter_config["class_names"] == ["a", "b", "c", "d"]
    # Only the learned tensors are stored, not the backbone.
    assert (path / ADAPTER_WEIGHTS).stat().st_size < 20_000


def test_round_trip_from_recorded_spelling(tmp_path) -> None:
    backbone_spec = "vit_tiny_patch16_224@random"  # seeded random weights: the spelling re-creates them exactly
    model = VQT(create_backbone(backbone_spec), num_classes=3).eval()
    save_adapter(model, tmp_path / "a", backbone_spec=backbone_spec)
    images = torch.randn(1, 3, 224, 224)
    assert torch.equal(load_adapter(tmp_path / "a")(images), model(images))
    # Other weights under the same architecture are refused, unless told not to check.
    other = create_backbone(backbone_spec)
    with torch.no_grad():
        other.cls_token.add_(1.0)
    with pytest.raises(AdapterError, match="other weights"):
        load_adapter(tmp_path / "a", backbone=other)
    assert load_adapter(tmp_path / "a", backbone=other, check_weights=False)(images).shape == (1, 3)


def test_other_backbone_width_or_depth_refused(tmp_path) -> None:
    _, path = trained_adapter(tmp_path)
    with pytest.raises(AdapterError, match="num_prefix_tokens: adapter 3 vs backbone 1"):
        load_adapter(path, backbone=tiny_vit("plain_cls"))
    from timm.models.vision_transformer import VisionTransformer

    wider = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=0)
    with pytest.raises(AdapterError, match="embed_dim: adapter 48 vs backbone 64"):
        load_adapter(path, backbone=wider)
    deeper = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, num_classes=0,
                               init_values=0.5, reg_tokens=2, no_embed_class=True)
    with pytest.raises(AdapterError, match="depth: adapter 3 vs backbone 4"):
        load_adapter(path, backbone=deeper)


def test_same_architecture_other_weights_refused(tmp_path) -> None:
    _, path = trained_adapter(tmp_path)
    with pytest.raises(AdapterError, match="other weights"):
        load_adapter(path, backbone=tiny_vit("dinov2_ls_reg", seed=1))


def test_other_q_refused(tmp_path) -> None:
    _, path = trained_adapter(tmp_path)
    with pytest.raises(AdapterError, match=r"Q=\[2, 2, 2\] per layer, expected \[1, 1, 1\]"):
        load_adapter(path, backbone=tiny_vit("dinov2_ls_reg"), num_queries=1)


def test_corrupt_files_refused(tmp_path) -> None:
    _, path = trained_adapter(tmp_path)
    weights = bytearray((path / ADAPTER_WEIGHTS).read_bytes())
    weights[-5] ^= 0xFF
    (path / ADAPTER_WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(AdapterError, match="checksum"):
        load_adapter(path, backbone=tiny_vit("dinov2_ls_reg"))
    (path / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt adapter config"):
        load_adapter(path, backbone=tiny_vit("dinov2_ls_reg"))
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "nowhere")


def test_tampered_config_shapes_refused(tmp_path) -> None:
    _, path = trained_adapter(tmp_path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    config["num_classes"] = 7
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="do not fit"):
        load_adapter(path, backbone=tiny_vit("dinov2_ls_reg"))
