"""Feeding a store to the device (vqt.training.feeding): the resident (gather) path and the streamed (prefetch)
path give bit-for-bit the batches, and so the training, of a plain unthreaded read of the store."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import vqt.training.evaluate
import vqt.training.grid
import vqt.training.trainers
from tests.tiny_models import tiny_vit
from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.features import extract_features
from vqt.methods.vqt import VQT
from vqt.training import Recipe, grid_configs, seed_init, train_cached, train_grid
from vqt.training.feeding import (
    ResidentStore,
    feed_batches,
    place_store,
    resolve_store_device,
    store_nbytes,
)

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Recipe(lr=0.5, weight_decay=1e-3, batch_size=8, epochs=3, warmup_epochs=1)


def make_store(root, dtype: str):
    backbone = tiny_vit("dinov2_ls_reg")
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(21, 3, 32, 32, generator=generator),
                            torch.randint(0, 3, (21,), generator=generator))
    store = extract_features(
        backbone, dataset, root / dtype, backbone_spec="tiny@random", transform={"none": True},
        dataset_meta={"name": "synthetic"}, dtype=dtype, batch_size=16, progress=False,
    )
    return backbone, store


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    return make_store(tmp_path_factory.mktemp("feeding"), "float16")


def plain_batches(store, batches: Sequence[np.ndarray], device) -> Iterator[tuple[TapOutput, torch.Tensor]]:
    """The obviously-correct feeding: read each batch from the store in this thread, then move it."""
    for index in batches:
        tapped, labels = store.batch(index)
        yield TapOutput([t.to(device) for t in tapped.tokens], tapped.pre_logits.to(device)), labels.to(device)


def train_both(backbone, store) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters after `train_cached` (one config) and `train_grid` (three configs, dropout on)."""
    model = seed_init(VQT(backbone, num_classes=3, num_queries=[1, 2, 1], query_dropout=0.1), 4)
    train_cached(model, store, RECIPE.replace(seed=4), val_store=store)
    template = VQT(backbone, num_classes=3, num_queries=[1, 2, 1], query_dropout=0.1)
    result = train_grid(template, store, grid_configs([0.5, 0.1], [1e-3], seeds=[0]) + grid_configs([0.25], [0.0], [9]),
                        RECIPE, val_store=store)
    return [p.detach().clone() for p in model.trainable_parameters()], [
        p.detach().clone() for p in result.grid.parameters()
    ]


def test_resident_and_streamed_feeding_train_bit_for_bit_like_a_plain_read(setup, monkeypatch) -> None:
    backbone, store = setup
    streamed = train_both(backbone, store)  # FeatureStore: the prefetch thread
    resident = train_both(backbone, ResidentStore(store, "cpu"))  # gathered by index from tensors in memory
    monkeypatch.setattr(vqt.training.trainers, "feed_batches", plain_batches)
    monkeypatch.setattr(vqt.training.evaluate, "feed_batches", plain_batches)
    monkeypatch.setattr(vqt.training.grid, "feed_batches", plain_batches)
    plain = train_both(backbone, store)
    for ours in (streamed, resident):
        for got, want in zip(ours[0] + ours[1], plain[0] + plain[1], strict=True):
            assert torch.equal(got, want)
    moved = seed_init(VQT(backbone, num_classes=3, num_queries=[1, 2, 1], query_dropout=0.1), 4)
    assert not all(torch.equal(a, b) for a, b in zip(moved.trainable_parameters(), plain[0], strict=False))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_resident_store_gathers_the_stored_values(tmp_path, dtype: str) -> None:
    _, store = make_store(tmp_path, dtype)
    resident = ResidentStore(store, "cpu", chunk=5)  # several chunks, the last one partial
    assert len(resident) == len(store)
    batches = [np.array([3, 0, 20, 7]), np.arange(8, 12), np.array([5])]
    for (got, got_labels), index in zip(feed_batches(resident, batches, "cpu"), batches, strict=True):
        want, want_labels = store.batch(index)
        assert got.pre_logits.dtype == want.pre_logits.dtype == resident.tokens.dtype
        assert torch.equal(got.pre_logits, want.pre_logits) and torch.equal(got_labels, want_labels)
        assert all(torch.equal(a, b) for a, b in zip(got.tokens, want.tokens, strict=True))
    assert store_nbytes(store) == resident.tokens.nbytes + resident.pre_logits.nbytes + resident.labels.nbytes


def test_streamed_feeding_reraises_a_read_error(setup) -> None:
    _, store = setup

    class Broken:
        def __len__(self) -> int:
            return len(store)

        def batch(self, index):
            if index[0] >= 8:
                raise OSError("disk gone")
            return store.batch(index)

    with pytest.raises(OSError, match="disk gone"):
        list(feed_batches(Broken(), [np.arange(0, 8), np.arange(8, 16)], "cpu"))  # type: ignore[arg-type]


def test_store_device_choices() -> None:
    assert resolve_store_device("auto", 10**6, "cpu") == "cpu"
    assert resolve_store_device("cpu", 10**12, "cpu") == "cpu"
    with pytest.raises(VQTError, match="needs a CUDA device"):
        resolve_store_device("cuda", 10, "cpu")
    with pytest.raises(VQTError, match="must be one of"):
        resolve_store_device("gpu", 10, "cpu")
    with pytest.raises(VQTError, match="needs a CUDA device"):
        place_store(object(), "cuda", "cpu")  # type: ignore[arg-type]


@pytest.mark.cuda
def test_auto_store_device_on_cuda() -> None:
    free, _ = torch.cuda.mem_get_info()
    assert resolve_store_device("auto", 10**6, "cuda") == "cuda"
    assert resolve_store_device("auto", free, "cuda") == "cpu"


@pytest.mark.cuda
def test_cuda_feeding_paths_give_the_stored_values(setup) -> None:
    _, store = setup
    batches = [np.array([3, 0, 20, 7]), np.arange(8, 16), np.array([5, 1])] * 3  # reuses both pinned slots
    resident = ResidentStore(store, "cuda")
    for fed in (feed_batches(store, batches, "cuda"), feed_batches(resident, batches, "cuda")):
        for (got, got_labels), index in zip(fed, batches, strict=True):
            want, want_labels = store.batch(index)
            assert got.pre_logits.is_cuda and got_labels.is_cuda
            assert torch.equal(got.pre_logits.cpu(), want.pre_logits) and torch.equal(got_labels.cpu(), want_labels)
            assert all(torch.equal(a.cpu(), b) for a, b in zip(got.tokens, want.tokens, strict=True))


@pytest.mark.cuda
def test_cuda_training_is_the_same_whichever_way_it_is_fed(setup) -> None:
    backbone, store = setup
    backbone = copy.deepcopy(backbone).cuda()
    results = []
    for store_device in ("cpu", "cuda"):
        model = seed_init(VQT(backbone, num_classes=3, num_queries=2), 1).cuda()
        train_cached(model, store, RECIPE, store_device=store_device)
        results.append([p.detach() for p in model.trainable_parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
