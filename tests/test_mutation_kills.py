"""Tests added by the mutation check (tests/mutation_check.py, report in docs/mutation-check.md).

Each test here kills a planted mutant that the rest of the suite let through; the mutant's name is in the test's
docstring. Most of them are consistent bugs: the single-model, online and grid trainers share the code, so the
tests that compare the trainers with each other cannot see a bug in the shared part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.tiny_models import tiny_vit
from vqt.errors import StoreError
from vqt.features import extract_features, open_store, request_meta
from vqt.features.store import META_FILE, check_meta
from vqt.methods.vqt import VQT
from vqt.training.recipe import seed_init, seeded_query_dropout

pytestmark = pytest.mark.usefixtures("one_thread")

TRANSFORM = {"resize": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
DATASET = {"list_file": "train800.txt", "entries_sha256": "abc123"}
COUNT = 12


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit("plain_cls")


@pytest.fixture(scope="module")
def store_path(backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(COUNT, 3, 32, 32, generator=generator), torch.arange(COUNT))
    path = tmp_path_factory.mktemp("kills") / "store"
    extract_features(backbone, data, path, backbone_spec="tiny@random", transform=TRANSFORM, dataset_meta=DATASET,
                     dtype="float32", batch_size=4, progress=False)
    return path


def _request(backbone) -> dict:
    return request_meta(backbone, backbone_spec="tiny@random", transform=TRANSFORM, dataset_meta=DATASET,
                        count=COUNT, dtype="float32")


# ------------------------------------------------------------------ query dropout (recipe.py)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_query_dropout_is_inverted_dropout_with_rate_p(backbone, p: float) -> None:
    """Kills `recipe_dropout_not_rescaled` (kept entries not scaled by 1/(1-p)) and
    `recipe_dropout_keep_prob_swapped` (entries dropped with probability 1-p instead of p).

    The reference (VPT/VQT) applies `nn.Dropout(p)` to the queries: each entry is zeroed with probability p and the
    kept ones are scaled by 1/(1-p), so the expected query is unchanged. The seeded dropout that the single and grid
    trainers share must do the same; comparing the trainers with each other cannot tell.
    """
    model = seed_init(VQT(backbone, num_classes=3, num_queries=2, query_dropout=p), 1).train()
    with seeded_query_dropout(model, seed=5):
        dropped = model.layer_queries(0, batch=4000).detach()  # (B, Q, D), a fresh mask per image
    queries = model.queries[0].detach().unsqueeze(0).expand_as(dropped)
    assert bool((queries != 0).all())
    kept = dropped != 0
    assert torch.allclose(dropped[kept], (queries / (1 - p))[kept], rtol=1e-6, atol=0)
    drop_rate = 1 - kept.double().mean().item()
    assert abs(drop_rate - p) < 0.01, drop_rate  # 384k draws: a standard deviation under 0.001
    mean_ratio = (dropped.double() / queries.double()).mean().item()
    assert abs(mean_ratio - 1) < 0.02, mean_ratio  # the expected query is unchanged (std under 0.002)


# ------------------------------------------------------------------ store reads (store.py)


@pytest.mark.parametrize("index", [[1, 3, 4], [0, 2], [5, 6, 7], [4], [9, 8], [0, 5, 11]])
def test_store_batch_returns_the_requested_rows(store_path: Path, backbone, index: list[int]) -> None:
    """Kills `store_sorted_run_taken_as_contiguous` (an increasing but gapped index list read as one run).

    The training order is random, so an increasing batch with gaps is rare there, and the store tests read an
    unsorted batch; this reads sorted, gapped, contiguous, single and descending index lists and compares each
    with plain fancy indexing of the stored arrays.
    """
    store = open_store(store_path, expect=_request(backbone))
    tapped, labels = store.batch(index)
    assert labels.tolist() == index  # the labels are the image numbers
    for layer, tokens in enumerate(tapped.tokens):
        assert torch.equal(tokens, torch.from_numpy(np.asarray(store.tokens[index][:, layer])))
    assert torch.equal(tapped.pre_logits, torch.from_numpy(np.asarray(store.pre_logits[index])))


# ------------------------------------------------------------------ metadata checks (store.py)


def test_store_with_a_nested_field_the_request_lacks_is_refused(tmp_path: Path, store_path: Path, backbone) -> None:
    """Kills `store_check_meta_only_requested_nested_keys` (nested dicts compared only on the request's keys).

    Nested metadata (architecture, transform, dataset) is compared key by key over the keys of *both* sides: a
    store whose transform has a step the request does not have (e.g. a centre crop) was made from other inputs.
    """
    meta = json.loads((store_path / META_FILE).read_text())
    stored = {**meta, "transform": {**meta["transform"], "crop_pct": 0.875}}
    with pytest.raises(StoreError, match=r"transform\.crop_pct"):
        check_meta(stored, _request(backbone), "store")
    copy = tmp_path / "store"
    copy.mkdir()
    for file in store_path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    (copy / META_FILE).write_text(json.dumps(stored))
    with pytest.raises(StoreError, match=r"transform\.crop_pct"):
        open_store(copy, expect=_request(backbone))


def test_format_version_is_checked_even_when_not_asked_for(tmp_path: Path, store_path: Path) -> None:
    """Kills `store_format_version_not_always_checked` (the version compared only when `expect` names it).

    `check_meta` documents that the format version is always compared, so a store written in another layout is
    never read with this code, even by a caller that checks nothing else (`open_store(path)`).
    """
    copy = tmp_path / "store"
    copy.mkdir()
    for file in store_path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(StoreError, match="format_version"):
        open_store(copy)
    with pytest.raises(StoreError, match="format_version"):
        check_meta({**meta, "format_version": 999}, {"img_size": meta["img_size"]})
