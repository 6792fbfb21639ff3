"""Build a store from rows of other stores, with no backbone pass.

VTAB-1k's train800val200 is exactly train800 plus val200: once those two are extracted, the third is a copy of
their rows. This saves a third of the extraction per task (the most expensive step on a small machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from vqt.errors import StoreError
from vqt.features.store import (
    COMPLETE_FILE,
    FIELD_DEFAULTS,
    LABELS_FILE,
    META_FILE,
    PRE_LOGITS_FILE,
    PROGRESS_FILE,
    TOKENS_FILE,
    FeatureStore,
    atomic_write_json,
    compared_fields,
    open_store,
)

# Metadata that must agree between the parts: everything but which images they hold.
_SHARED_FIELDS = ("backbone", "weights_sha256", "architecture", "img_size", "transform", "dtype", "precision",
                  "format_version")


def assemble_store(
    parts: Sequence[FeatureStore],
    rows: Sequence[tuple[int, int]],
    out_dir: str | Path,
    dataset_meta: Mapping[str, Any],
    *,
    expect: Mapping[str, Any] | None = None,
) -> FeatureStore:
    """Write a complete store whose image i is row `rows[i] = (part, index)` of `parts`.

    The result's metadata is the parts' (same backbone, weights, transform, dtype) with `dataset_meta` and the new
    count, so `open_store` checks it exactly like an extracted store of the same request. The parts carry no
    proof of what they were made for: pass the request's metadata as `expect` (as `open_store` takes it) so the
    result is checked against the request, not against a copy of the parts' own metadata.
    """
    first = parts[0].meta
    for part in parts[1:]:
        differing = [field for field in _SHARED_FIELDS if part.meta.get(field, FIELD_DEFAULTS.get(field))
                     != first.get(field, FIELD_DEFAULTS.get(field))]
        if differing:
            raise StoreError(f"cannot assemble stores that differ in {', '.join(differing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE_FILE).unlink(missing_ok=True)
    (out / PROGRESS_FILE).unlink(missing_ok=True)  # an interrupted assembly must not look like a resumable extraction
    count = len(rows)
    meta = {
        **first,
        "dataset": {**dict(dataset_meta), "count": count},
        "shapes": {
            "tokens": [count, *first["shapes"]["tokens"][1:]],
            "pre_logits": [count, *first["shapes"]["pre_logits"][1:]],
        },
    }
    atomic_write_json(out / META_FILE, meta)
    tokens = open_memmap(out / TOKENS_FILE, mode="w+", dtype=parts[0].tokens.dtype,
                         shape=tuple(meta["shapes"]["tokens"]))
    pre_logits = open_memmap(
        out / PRE_LOGITS_FILE, mode="w+", dtype=parts[0].pre_logits.dtype, shape=tuple(meta["shapes"]["pre_logits"])
    )
    labels = open_memmap(out / LABELS_FILE, mode="w+", dtype=np.int64, shape=(count,))
    for target, (part, index) in enumerate(rows):
        tokens[target] = parts[part].tokens[index]
        pre_logits[target] = parts[part].pre_logits[index]
        labels[target] = parts[part].labels[index]
    for array in (tokens, pre_logits, labels):
        array.flush()
    atomic_write_json(out / PROGRESS_FILE, {"done": count})
    atomic_write_json(out / COMPLETE_FILE, {"count": count, "weights_sha256": meta["weights_sha256"]})
    own = compared_fields(meta)
    return open_store(out, own if expect is None else expect)
