"""The protocol's cached feature stores: one per task and split, reused, resumed, assembled or extracted.

Stores are cached under `<store_dir>/<task>/<split>` and reused only when their metadata (backbone, weights,
transform, list contents, dtype) matches the request; otherwise the feature-store code refuses them by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from vqt.backbone.sources import weights_fingerprint
from vqt.data.lists import ImageList
from vqt.data.tasks import dataset_meta, make_dataset, read_split
from vqt.distributed.context import broadcast_object, current
from vqt.errors import StoreError, os_error_message
from vqt.features import FeatureStore, extract_features, is_complete, open_store
from vqt.features.assemble import assemble_store
from vqt.features.request import StoreRequest
from vqt.features.store import META_FILE, check_meta, compared_fields, read_meta

log = logging.getLogger("vqt.protocol")

def task_store(
    backbone: nn.Module,
    *,
    backbone_spec: str,
    data_root: str | Path,
    task: str,
    split: str,
    transform: Callable[[Any], Any],
    transform_description: Mapping[str, Any],
    store_dir: str | Path,
    dtype: str = "float16",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    out: str | Path | None = None,
    overwrite_hint: str = "pass --overwrite-stores to replace it, or use another --store-dir",
    precision: str = "fp32",
    shard: bool = False,
) -> FeatureStore:
    """The feature store of one split: reused when it matches, resumed when half-written, extracted otherwise.

    Every store this opens — the split's own, or the train800 and val200 stores train800val200 is assembled
    from — is checked against this request (backbone, weights, transform, dtype, compute precision of the
    backbone pass ('fp32' or 'bf16', resolved), list and image files).

    `shard`: every rank of a torchrun launch calls this together; the extraction is split across them
    (`extract_features(shard=True)`) and an assembly of train800val200 runs on rank 0 while the others wait.
    """
    images = read_split(data_root, task, split)
    out = Path(out) if out is not None else Path(store_dir) / task / split
    requests = SplitRequests(backbone, backbone_spec, transform_description, dtype, precision)
    try:
        if split == "train800val200" and store_dir is not None:
            assembled = _on_rank_0(
                lambda: None if is_complete(out) else _assemble_from_parts(
                    images, out, data_root, task, Path(store_dir) / task, requests, overwrite),
                shard, f"the assembly of feature store {out}")
            if assembled is not None:
                return assembled
        return extract_features(backbone, make_dataset(images, transform), out,
                                request=requests.request(task, split, images), batch_size=batch_size,
                                num_workers=num_workers, progress=progress, overwrite=overwrite, shard=shard)
    except StoreError as error:
        raise StoreError(str(error).replace("(or pass overwrite=True to replace it)", f"({overwrite_hint})")
                         ) from error


class SplitRequests:
    """The request every split of one task's stores is checked against (`vqt.features.request.StoreRequest`),
    the backbone's weights hashed once for all of them."""

    def __init__(self, backbone: nn.Module, backbone_spec: str, transform_description: Mapping[str, Any],
                 dtype: str, precision: str = "fp32") -> None:
        self.backbone = backbone
        self.base = StoreRequest(backbone_spec, dict(transform_description), {}, dtype, precision,
                                 weights_fingerprint(backbone))

    def request(self, task: str, split: str, images: ImageList) -> StoreRequest:
        return self.base.for_split(dataset_meta(task, split, images))

    def expect(self, task: str, split: str, images: ImageList) -> dict[str, Any]:
        return compared_fields(self.request(task, split, images).meta(self.backbone, len(images)))


def _assemble_from_parts(
    images: ImageList, out: Path, data_root: str | Path, task: str, task_dir: Path, requests: SplitRequests,
    overwrite: bool,
) -> FeatureStore | None:
    """train800val200 from the complete train800 and val200 stores when both were made for this request and
    its entries are exactly theirs; None (extract instead) otherwise."""
    expect = requests.expect(task, "train800val200", images)
    if (out / META_FILE).is_file() and not overwrite:
        check_meta(read_meta(out), expect, out)  # a half-written store of another request: refuse, as extraction does
    parts, rows_of = [], {}
    for split in ("train800", "val200"):
        if not is_complete(task_dir / split):
            return None
        part_images = read_split(data_root, task, split)
        try:
            store = open_store(task_dir / split, requests.expect(task, split, part_images))
        except StoreError as error:
            log.info("%s/train800val200: not assembled (%s)", task, error)
            return None
        for index, entry in enumerate(part_images.entries):
            rows_of.setdefault((entry.relpath, entry.label), (len(parts), index))
        parts.append(store)
    rows = [rows_of.get((entry.relpath, entry.label)) for entry in images.entries]
    if not rows or any(row is None for row in rows):
        return None
    log.info("%s/train800val200: assembled from the train800 and val200 stores (no backbone pass)", task)
    return assemble_store(parts, rows, out, dataset_meta(task, "train800val200", images), expect=expect)


def _on_rank_0(job: Callable[[], FeatureStore | None], together: bool, what: str) -> FeatureStore | None:
    """`job()`; when every rank of a torchrun launch calls this `together`, on rank 0 only: the others wait
    for its outcome and open the store it made (or raise its error)."""
    ctx = current()
    if not (together and ctx.distributed):
        return job()
    result, failed = None, None
    if ctx.is_main:
        try:
            result = job()
        except (StoreError, OSError) as error:
            failed = error
    path, message = broadcast_object(
        (None if result is None else str(result.path),
         None if failed is None else (os_error_message(failed) if isinstance(failed, OSError) else str(failed))),
        what,
    )
    if failed is not None:
        raise failed
    if message is not None:
        raise StoreError(f"rank 0 failed in {what}: {message}")
    return result if ctx.is_main or path is None else open_store(path)
