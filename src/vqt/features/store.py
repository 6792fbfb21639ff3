"""The feature store: what the query path reads, extracted once, on disk as memory-mapped arrays.

Without augmentation (VTAB-1k uses none) everything the queries read is a fixed function of the image: per block
the normalised input tokens X_l and the backbone's pre-logits feature (docs/design.md §1.6). A store keeps, per image,
X_l for every block (L, N, D), the pre-logits feature (D) and the label, so training epochs never run the
backbone. Arrays are `.npy` files opened with `numpy.memmap`, so a store larger than RAM still works: the OS
pages in what a batch touches.

Layout of a store directory::

    meta.json       what the store was made from (backbone, weights hash, transform, dataset, dtype, the compute
                    precision of the backbone pass, ...)
    tokens.npy      (count, L, N, D) in the store dtype (bf16 kept as its raw uint16 bits)
    pre_logits.npy  (count, D) in the store dtype
    labels.npy      (count,) int64
    progress.json   images written so far (extraction resumes from here); under torchrun each rank also keeps
                    progress.rank<R>.json, the range of its own shard written so far
    COMPLETE        written atomically, last: only a store with this marker is ever opened for use

A store is refused (`StoreError`, naming the field) when its metadata does not match what the caller expects;
it is never silently reused for another backbone, transform or dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqt.backbone.tap import TapOutput
from vqt.checkpoint.files import library_version
from vqt.errors import StoreError
from vqt.io import write_atomic

FORMAT_VERSION = 1
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
COMPLETE_FILE = "COMPLETE"
TOKENS_FILE = "tokens.npy"
PRE_LOGITS_FILE = "pre_logits.npy"
LABELS_FILE = "labels.npy"

# Store dtype name -> (numpy dtype on disk, torch dtype of the values).
DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float16": (np.dtype(np.float16), torch.float16),
    "bfloat16": (np.dtype(np.uint16), torch.bfloat16),  # numpy has no bf16: keep the raw bits
    "float32": (np.dtype(np.float32), torch.float32),
}

# The metadata fields a request is checked against (`compared_fields`); library_version is informational only:
# the features do not depend on it.
COMPARED_FIELDS = (
    "format_version",
    "backbone",
    "weights_sha256",
    "architecture",
    "img_size",
    "transform",
    "dataset",
    "dtype",
    "precision",
    "shapes",
)
# What a compared field means when a store's metadata lacks it: stores written before the field existed. Their
# features were computed in fp32 (`precision` was added with `--precision`), so they stay valid for fp32 requests.
FIELD_DEFAULTS: dict[str, Any] = {"precision": "fp32"}


def compared_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a store's (or a request's) metadata that must match: pass it as `expect` to `open_store`."""
    return {key: meta[key] for key in COMPARED_FIELDS if key in meta}


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise StoreError(f"unknown store dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return dtype


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a torn one."""
    write_atomic(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples/lists and int/float spellings compare the way they are stored."""
    return json.loads(json.dumps(value, sort_keys=True))


def _differences(stored: Any, wanted: Any, prefix: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found = []
        for key in sorted(set(stored) | set(wanted)):
            found += _differences(
                stored.get(key, "<missing>"), wanted.get(key, "<missing>"), f"{prefix}.{key}"
            )
        return found
    return [] if stored == wanted else [f"{prefix}: store has {stored!r}, requested {wanted!r}"]


def check_meta(stored: Mapping[str, Any], expect: Mapping[str, Any], where: str | Path = "") -> None:
    """Raise `StoreError` naming every field of `expect` whose value differs from the store's metadata.

    Only the fields present in `expect` are compared (plus the format version, always), so a caller may check
    just what it knows; nested dicts (architecture, transform, dataset) are compared key by key. A field the store
    predates reads as its `FIELD_DEFAULTS` value (an old store has no `precision`: it was extracted in fp32).
    """
    wanted = dict(_canonical(dict(expect)))
    wanted.setdefault("format_version", FORMAT_VERSION)
    problems: list[str] = []
    for key in sorted(wanted):
        value = stored.get(key, FIELD_DEFAULTS.get(key, "<missing>"))
        problems += _differences(_canonical(value), wanted[key], key)
    if problems:
        raise StoreError(
            f"feature store {where} was made for a different request ({'; '.join(problems)}); "
            "extract a new store (or pass overwrite=True to replace it)"
        )


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads((path / META_FILE).read_text())
    except FileNotFoundError as error:
        raise StoreError(f"{path} is not a feature store (no {META_FILE})") from error
    except json.JSONDecodeError as error:
        raise StoreError(f"{path / META_FILE} is corrupt ({error})") from error


def read_progress(path: str | Path) -> int:
    """Images durably written so far (0 when extraction never committed a chunk)."""
    try:
        return int(json.loads((Path(path) / PROGRESS_FILE).read_text())["done"])
    except FileNotFoundError:
        return 0
    except (json.JSONDecodeError, KeyError, ValueError) as error:
        raise StoreError(f"{Path(path) / PROGRESS_FILE} is corrupt ({error})") from error


RANK_PROGRESS_GLOB = "progress.rank*.json"


def rank_progress_file(rank: int) -> str:
    """Progress of one rank of a sharded (torchrun) extraction: {"start": first image, "done": end of its rows}."""
    return f"progress.rank{rank}.json"


def written_ranges(path: str | Path) -> list[tuple[int, int]]:
    """Image ranges [start, stop) durably written: `progress.json`'s prefix and every rank's range."""
    path = Path(path)
    ranges = [(0, read_progress(path))]
    for file in sorted(path.glob(RANK_PROGRESS_GLOB)):
        try:
            record = json.loads(file.read_text())
            ranges.append((int(record["start"]), int(record["done"])))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as error:
            raise StoreError(f"{file} is corrupt ({error})") from error
    return sorted((start, stop) for start, stop in ranges if stop > start)


def written_count(path: str | Path) -> int:
    """How many images the written ranges cover (they may overlap after a resume with another world size)."""
    covered, end = 0, 0
    for start, stop in written_ranges(path):
        covered += max(0, stop - max(start, end))
        end = max(end, stop)
    return covered


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_FILE).is_file()


def _to_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.int16).view(torch.bfloat16)
    return tensor


class FeatureStore:
    """A complete, checked store, opened read-only. Use `open_store` to get one."""

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.dtype: str = meta["dtype"]
        mode = "r"
        self.tokens: np.ndarray = np.load(self.path / TOKENS_FILE, mmap_mode=mode)
        self.pre_logits: np.ndarray = np.load(self.path / PRE_LOGITS_FILE, mmap_mode=mode)
        self.labels: np.ndarray = np.load(self.path / LABELS_FILE)
        count = int(meta["dataset"]["count"])
        if not (len(self.tokens) == len(self.pre_logits) == len(self.labels) == count):
            raise StoreError(f"feature store {self.path} is corrupt: array lengths differ from count {count}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def depth(self) -> int:
        """L, the number of blocks whose X_l the store holds."""
        return int(self.tokens.shape[1])

    @property
    def nbytes_per_image(self) -> int:
        """Bytes a training epoch reads per image (tokens and pre-logits)."""
        return int(self.tokens[0].nbytes + self.pre_logits[0].nbytes)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[TapOutput, torch.Tensor]:
        """The stored tap output (store dtype, CPU) and labels of the images at `indices`, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and np.all(np.diff(index) == 1):  # a contiguous run: one sequential copy, no gather
            rows = slice(int(index[0]), int(index[-1]) + 1)
            tokens, pre = np.array(self.tokens[rows]), np.array(self.pre_logits[rows])
        else:  # fancy indexing copies into fresh (writable) arrays
            tokens, pre = self.tokens[index], self.pre_logits[index]
        tokens_t = _to_torch(tokens, self.dtype)
        tapped = TapOutput(tokens=list(tokens_t.unbind(1)), pre_logits=_to_torch(pre, self.dtype))
        return tapped, torch.from_numpy(self.labels[index])

    def batches(
        self, batch_size: int, order: Sequence[int] | None = None
    ) -> Iterator[tuple[TapOutput, torch.Tensor]]:
        """`batch` over consecutive chunks of `order` (default: store order), `batch_size` images each."""
        order = np.arange(len(self)) if order is None else np.asarray(order)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def open_store(path: str | Path, expect: Mapping[str, Any] | None = None) -> FeatureStore:
    """Open a complete store; refuse (naming the field) one made for another request, or a half-written one."""
    path = Path(path)
    meta = read_meta(path)
    if not is_complete(path):
        raise StoreError(
            f"feature store {path} is incomplete ({written_count(path)} of {meta.get('dataset', {}).get('count')} "
            "images written): extraction was interrupted; rerun the extraction to resume it"
        )
    check_meta(meta, expect or {}, path)
    return FeatureStore(path, meta)


def store_meta(
    *,
    backbone_spec: str,
    weights_sha256: str,
    architecture: Mapping[str, Any],
    img_size: int,
    transform: Mapping[str, Any],
    dataset_meta: Mapping[str, Any],
    count: int,
    dtype: str,
    num_tokens: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The metadata a store is made from (and that a request is compared against)."""
    if precision not in ("fp32", "bf16"):  # a resolved precision ('auto' depends on the device: resolve it first)
        raise StoreError(f"store precision must be 'fp32' or 'bf16' (resolved), not {precision!r}")
    depth, dim = int(architecture["depth"]), int(architecture["embed_dim"])
    dataset = {**_canonical(dict(dataset_meta)), "count": int(count)}
    return _canonical(
        {
            "format_version": FORMAT_VERSION,
            "library_version": library_version(),
            "backbone": backbone_spec,
            "weights_sha256": weights_sha256,
            "architecture": dict(architecture),
            "img_size": int(img_size),
            "transform": dict(transform),
            "dataset": dataset,
            "dtype": check_dtype(dtype),
            "precision": precision,
            "shapes": {"tokens": [int(count), depth, int(num_tokens), dim], "pre_logits": [int(count), dim]},
        }
    )
