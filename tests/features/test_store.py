"""Feature store: contents, metadata refusal for every field, resume after interruption, half-written stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers import COUNT, STORE_DATASET, STORE_TRANSFORM, CountingDataset, extract
from tests.tiny_models import tiny_vit
from vqt.backbone.tap import BackboneTap
from vqt.errors import StoreError
from vqt.features import extract_features, open_store, request_meta
from vqt.features.store import COMPLETE_FILE, META_FILE, PROGRESS_FILE, check_meta

pytestmark = pytest.mark.usefixtures("one_thread")


TRANSFORM, DATASET = STORE_TRANSFORM, STORE_DATASET  # what `extract` writes


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit("plain_cls")


@pytest.fixture
def dataset():
    return CountingDataset()


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 1.6e-2)])
@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg"])
def test_store_holds_the_tap_output(
    tmp_path: Path, dataset, dtype: str, tolerance: float, family: str
) -> None:
    backbone = tiny_vit(family)
    store = extract(backbone, dataset, tmp_path / "store", dtype=dtype)
    assert len(store) == COUNT and store.depth == 3
    tapped = BackboneTap(backbone)(dataset.images)
    index = np.array([7, 2, 19, 0])
    batch, labels = store.batch(index)
    assert torch.equal(labels, dataset.labels[index])
    for layer in range(3):
        got, expected = batch.tokens[layer].float(), tapped.tokens[layer][index]
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= tolerance * expected.abs().max()
    assert (batch.pre_logits.float() - tapped.pre_logits[index]).abs().max() <= tolerance * 10 + 1e-6
    meta = json.loads((tmp_path / "store" / META_FILE).read_text())
    assert meta["dtype"] == dtype and meta["dataset"]["count"] == COUNT and meta["transform"] == TRANSFORM


def _expect(backbone, **changes):
    options = dict(
        backbone_spec="tiny@random", transform=TRANSFORM, dataset_meta=DATASET, count=COUNT, dtype="float32"
    )
    options.update(changes)
    return request_meta(backbone, **options)


def test_matching_request_opens_and_is_reused(tmp_path: Path, backbone, dataset) -> None:
    extract(backbone, dataset, tmp_path / "s")
    open_store(tmp_path / "s", expect=_expect(backbone))
    reads = dataset.reads
    extract(backbone, dataset, tmp_path / "s")  # same request: reused, nothing re-read
    assert dataset.reads == reads


@pytest.mark.parametrize(
    "field, change",
    [
        ("backbone", dict(backbone_spec="other@random")),
        ("transform.std", dict(transform={**TRANSFORM, "std": [0.229, 0.224, 0.225]})),
        ("dataset.entries_sha256", dict(dataset_meta={**DATASET, "entries_sha256": "def456"})),
        ("dataset.list_file", dict(dataset_meta={**DATASET, "list_file": "val200.txt"})),
        ("dataset.count", dict(count=COUNT + 1)),
        ("dtype", dict(dtype="float16")),
    ],
)
def test_stale_store_refused_naming_the_field(
    tmp_path: Path, backbone, dataset, field: str, change: dict
) -> None:
    extract(backbone, dataset, tmp_path / "s")
    with pytest.raises(StoreError, match=field.replace(".", r"\.")):
        open_store(tmp_path / "s", expect=_expect(backbone, **change))


def test_other_weights_refused(tmp_path: Path, backbone, dataset) -> None:
    extract(backbone, dataset, tmp_path / "s")
    with pytest.raises(StoreError, match="weights_sha256"):
        open_store(tmp_path / "s", expect=_expect(tiny_vit("plain_cls", seed=1)))


def test_other_architecture_and_image_size_refused(tmp_path: Path, backbone, dataset) -> None:
    extract(backbone, dataset, tmp_path / "s")
    with pytest.raises(StoreError, match=r"architecture\.num_prefix_tokens"):
        open_store(tmp_path / "s", expect=_expect(tiny_vit("dinov2_ls_reg")))
    with pytest.raises(StoreError, match=r"img_size"):
        open_store(tmp_path / "s", expect={"img_size": 64})


def test_format_version_refused(tmp_path: Path, backbone, dataset) -> None:
    extract(backbone, dataset, tmp_path / "s")
    meta_path = tmp_path / "s" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format_version"):
        open_store(tmp_path / "s", expect=_expect(backbone))


def test_extraction_refuses_a_store_of_another_request_unless_overwrite(
    tmp_path: Path, backbone, dataset
) -> None:
    extract(backbone, dataset, tmp_path / "s")
    other = {**TRANSFORM, "resize": 64}
    with pytest.raises(StoreError, match=r"transform\.resize"):
        extract(backbone, dataset, tmp_path / "s", transform=other)
    store = extract(backbone, dataset, tmp_path / "s", transform=other, overwrite=True)
    assert store.meta["transform"] == other


class Interrupt(Exception):
    pass


def _interrupt_after(chunks: int):
    calls = []

    def hook(done: int) -> None:
        calls.append(done)
        if len(calls) == chunks:
            raise Interrupt

    return hook


def test_resume_after_interruption_equals_uninterrupted(tmp_path: Path, backbone, dataset) -> None:
    reference = extract(backbone, CountingDataset(), tmp_path / "reference")
    with pytest.raises(Interrupt):
        extract(backbone, dataset, tmp_path / "s", on_chunk=_interrupt_after(2))
    assert json.loads((tmp_path / "s" / PROGRESS_FILE).read_text())["done"] == 16
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    dataset.reads = 0
    resumed = extract(backbone, dataset, tmp_path / "s")
    assert dataset.reads == COUNT - 16  # only the images after the last committed chunk
    assert np.array_equal(resumed.tokens, reference.tokens)
    assert np.array_equal(resumed.pre_logits, reference.pre_logits)
    assert np.array_equal(resumed.labels, reference.labels)


def test_crash_between_chunks_resumes_from_last_commit(tmp_path: Path, backbone) -> None:
    class Crashing(CountingDataset):
        def __getitem__(self, index: int):
            if index == 13:
                raise RuntimeError("disk gone")
            return super().__getitem__(index)

    with pytest.raises(RuntimeError, match="disk gone"):
        extract(backbone, Crashing(), tmp_path / "s")
    assert json.loads((tmp_path / "s" / PROGRESS_FILE).read_text())["done"] == 8
    resumed = extract(backbone, CountingDataset(), tmp_path / "s")
    reference = extract(backbone, CountingDataset(), tmp_path / "reference")
    assert np.array_equal(resumed.tokens, reference.tokens)


def test_half_written_store_refused(tmp_path: Path, backbone, dataset) -> None:
    extract(backbone, dataset, tmp_path / "s")
    (tmp_path / "s" / COMPLETE_FILE).unlink()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s", expect=_expect(backbone))
    with pytest.raises(StoreError, match="not a feature store"):
        open_store(tmp_path / "empty")


def test_non_store_directory_refused(tmp_path: Path, backbone, dataset) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a feature store"):
        extract(backbone, dataset, tmp_path / "d")


def test_tensor_dataset_and_unknown_dtype(tmp_path: Path, backbone) -> None:
    data = TensorDataset(torch.randn(6, 3, 32, 32), torch.arange(6))
    store = extract(backbone, data, tmp_path / "s", dtype="float16")
    assert store.tokens.dtype == np.float16 and store.labels.tolist() == list(range(6))
    with pytest.raises(StoreError, match="dtype"):
        extract(backbone, data, tmp_path / "t", dtype="int8")


def test_interrupted_overwrite_is_not_opened_as_complete(tmp_path: Path, backbone, dataset) -> None:
    """An overwrite removes the old store's completion marker before writing anything: stopped half-way, the
    directory is an incomplete store of the *new* request, never a complete one with half-new rows."""
    extract(backbone, dataset, tmp_path / "s")
    other = {**TRANSFORM, "resize": 64}
    with pytest.raises(Interrupt):
        extract(backbone, dataset, tmp_path / "s", transform=other, overwrite=True, on_chunk=_interrupt_after(1))
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    dataset.reads = 0
    resumed = extract(backbone, dataset, tmp_path / "s", transform=other)  # resumes the new request
    assert dataset.reads == COUNT - 8
    reference = extract(backbone, CountingDataset(), tmp_path / "reference", transform=other)
    assert resumed.meta["transform"] == other
    assert np.array_equal(resumed.tokens, reference.tokens)


@pytest.mark.parametrize("overwrite", [False, True])
def test_half_written_store_of_another_request_is_not_resumed(
    tmp_path: Path, backbone, dataset, overwrite: bool
) -> None:
    """Resuming keeps the rows already written, so it is only allowed for the very request that wrote them."""
    with pytest.raises(Interrupt):
        extract(backbone, dataset, tmp_path / "s", on_chunk=_interrupt_after(1))
    other = tiny_vit("plain_cls", seed=1)  # same shapes, other weights: its rows would be silently wrong
    if not overwrite:
        dataset.reads = 0
        with pytest.raises(StoreError, match="weights_sha256"):
            extract(other, dataset, tmp_path / "s")
        assert dataset.reads == 0  # refused before any work, not after filling the rest with other features
        return
    dataset.reads = 0
    store = extract(other, dataset, tmp_path / "s", overwrite=True)
    assert dataset.reads == COUNT  # started again from the first image
    reference = extract(other, CountingDataset(), tmp_path / "reference")
    assert np.array_equal(store.tokens, reference.tokens)


def test_every_field_a_store_records_is_compared(backbone) -> None:
    """A field added to the metadata but not to COMPARED_FIELDS would never be checked on reuse."""
    from vqt.features.store import COMPARED_FIELDS, compared_fields

    meta = _expect(backbone)
    assert set(meta) - set(COMPARED_FIELDS) == {"library_version"}
    assert compared_fields(meta) == {k: v for k, v in meta.items() if k != "library_version"}


def test_declared_torch_supports_bf16_stores() -> None:
    """A bf16 store is read with `torch.from_numpy` on its uint16 bits, which torch supports from 2.3 on."""
    import re

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    torch_minimum = re.search(r'"torch>=(\d+)\.(\d+)', pyproject)  # (tomllib is Python >= 3.11 only)
    assert torch_minimum is not None and (int(torch_minimum[1]), int(torch_minimum[2])) >= (2, 3)
    assert torch.from_numpy(np.zeros(2, np.uint16)).view(torch.int16).view(torch.bfloat16).dtype == torch.bfloat16


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
