"""Store accuracy: models whose features do not train (linear, Head2Toe) share one pass over a store's features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CountingDataset, extract
from tests.tiny_models import tiny_vit
from vqt.methods.registry import create_method
from vqt.protocol import accuracy
from vqt.protocol.compression import compress

pytestmark = pytest.mark.usefixtures("one_thread")


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model with random (non-trivial) trainable weights: the head, and the queries of a VQT."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def plain_accuracy(model: torch.nn.Module, dataset: CountingDataset) -> float:
    """The obvious computation: the model's own forward on the images."""
    with torch.no_grad():
        return float((model(dataset.images).argmax(-1) == dataset.labels).double().mean())


@pytest.fixture
def store_and_data(tmp_path: Path):
    backbone = tiny_vit("dinov2_ls_reg")
    dataset = CountingDataset()
    return backbone, extract(backbone, dataset, tmp_path / "store"), dataset


def count_passes(monkeypatch) -> list[int]:
    passes: list[int] = []
    original = accuracy.store_features

    def counting(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(accuracy, "store_features", counting)
    return passes


@pytest.mark.parametrize("method", ["head2toe", "linear"])
def test_seeds_of_a_head_method_share_one_pass_over_the_store(store_and_data, monkeypatch, method: str) -> None:
    """Before: every seed recomputed the features (for Head2Toe every block's attention: a backbone pass each)."""
    backbone, store, dataset = store_and_data
    models = [randomised(create_method(method, backbone, 5), seed) for seed in range(3)]
    passes = count_passes(monkeypatch)
    got = accuracy.evaluate_store_models(models, store)
    assert len(passes) == 1
    assert got == pytest.approx([plain_accuracy(m, dataset) for m in models], abs=1e-12)
    assert len(set(got)) > 1  # the heads differ, so a shared pass that also shared the head would show


def test_a_shared_cache_serves_compression_and_test_from_one_pass(store_and_data, monkeypatch) -> None:
    backbone, store, dataset = store_and_data
    models = [randomised(create_method("head2toe", backbone, 5), seed) for seed in range(2)]
    passes = count_passes(monkeypatch)
    cache: dict = {}
    compressed = [compress(m, store, keep_fraction=0.5, lr=0.01, weight_decay=0.0, epochs=2, warmup_epochs=0, seed=i,
                           feature_cache=cache) for i, m in enumerate(models)]
    got = accuracy.evaluate_store_models(models + compressed, store, cache=cache)
    assert len(passes) == 1
    assert got == pytest.approx([plain_accuracy(m, dataset) for m in models + compressed], abs=1e-12)


def test_models_whose_features_differ_are_not_shared(store_and_data, monkeypatch) -> None:
    """VQT's features depend on its trained queries; Head2Toe's on its sources: each is computed on its own."""
    backbone, store, dataset = store_and_data
    models = [randomised(create_method("vqt", backbone, 5, num_queries=1), seed) for seed in range(2)]
    models += [randomised(create_method("head2toe", backbone, 5, sources=sources), 7)
               for sources in (("norm1",), ("norm1", "attn"))]
    passes = count_passes(monkeypatch)
    got = accuracy.evaluate_store_models(models, store)
    assert len(passes) == 4
    assert got == pytest.approx([plain_accuracy(m, dataset) for m in models], abs=1e-12)
