"""One no-autograd backbone pass over a dataset, written to a feature store in resumable chunks.

Why chunks: extracting a large split takes long; an interruption (crash, pre-emption, Ctrl-C) must cost at most
one chunk. After each chunk the arrays are synced to disk and `progress.json` is replaced atomically; a rerun
with the same request continues from there. The `COMPLETE` marker is written last, so a half-written store is
never opened as a complete one (`open_store` refuses it). Under torchrun the images are split across the ranks
in contiguous shards of whole chunks; each rank writes its own rows and its own `progress.rank<R>.json`, rank 0
the metadata first and the marker last, after every rank's shard is written (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vqt.backbone.tap import BackboneTap
from vqt.distributed.context import (
    DistributedError,
    all_gather_object,
    barrier,
    broadcast_object,
    current,
    progress_enabled,
    report_before_telling,
)
from vqt.distributed.shards import contiguous_shard
from vqt.errors import StoreError, first_line
from vqt.features.request import StoreRequest
from vqt.features.store import (
    COMPLETE_FILE,
    DTYPES,
    LABELS_FILE,
    META_FILE,
    PRE_LOGITS_FILE,
    PROGRESS_FILE,
    RANK_PROGRESS_GLOB,
    TOKENS_FILE,
    FeatureStore,
    atomic_write_json,
    check_dtype,
    check_meta,
    compared_fields,
    is_complete,
    open_store,
    rank_progress_file,
    read_meta,
    written_ranges,
)
from vqt.precision import autocast, resolve_precision

STORE_FILES = (COMPLETE_FILE, PROGRESS_FILE, TOKENS_FILE, PRE_LOGITS_FILE, LABELS_FILE, META_FILE)


def request_meta(
    backbone_or_tap: nn.Module,
    *,
    backbone_spec: str,
    transform: Mapping[str, Any],
    dataset_meta: Mapping[str, Any],
    count: int,
    dtype: str = "float16",
    fingerprint: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The metadata a store for this request has; pass it as `expect` to `open_store` to check a store
    (`StoreRequest(...).meta(backbone, count)` spelled out)."""
    return StoreRequest(backbone_spec, transform, dataset_meta, dtype, precision, fingerprint).meta(backbone_or_tap,
                                                                                                   count)


def _remove_store(path: Path) -> None:
    for name in STORE_FILES:
        (path / name).unlink(missing_ok=True)
    for file in path.glob(RANK_PROGRESS_GLOB):
        file.unlink()


def extract_features(
    backbone_or_tap: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    backbone_spec: str | None = None,
    transform: Mapping[str, Any] | None = None,
    dataset_meta: Mapping[str, Any] | None = None,
    dtype: str = "float16",
    batch_size: int = 64,
    num_workers: int = 0,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    fingerprint: str | None = None,
    precision: str = "fp32",
    shard: bool = False,
    request: StoreRequest | None = None,
) -> FeatureStore:
    """Extract (or resume, or reuse) the feature store of `dataset` under `out_dir`.

    Args:
        backbone_or_tap: a frozen timm ViT or a `BackboneTap` around one.
        dataset: any map-style dataset of (image tensor (3, H, W), integer label), read in order.
        backbone_spec: how the backbone was named (`vqt.backbone.sources` spelling), recorded and compared.
        transform: JSON-able description of the input transform and normalisation, recorded and compared.
        dataset_meta: JSON-able description of the split (e.g. list file, hash of its entries); `count` is added.
        dtype: "float16" (default), "bfloat16" or "float32" for the stored tokens and pre-logits.
        chunk_size: images between durable commits (rounded up to whole batches).
        overwrite: replace a store made for another request instead of refusing it.
        on_chunk: called with the number of images committed after each chunk (progress reporting, tests).
        fingerprint: `weights_fingerprint` of the backbone when the caller already has it (hashing the weights
            of a large backbone takes a moment; the protocol checks several stores against one backbone).
        precision: compute precision of the backbone pass, 'fp32' or 'bf16' (`torch.autocast`; 'auto' is
            resolved for `device` by `vqt.precision.resolve_precision`); recorded in the metadata and compared.
        shard: every rank of a torchrun launch (`vqt.distributed.context`) calls this together: the images are
            split across them, each rank writes its own rows of the one store, rank 0 the metadata and the
            completion marker (docs/distributed.md). False (default, or outside torchrun): this process alone
            extracts the whole store.
        request: the store's whole request in one value (`vqt.features.request.StoreRequest`), in place of
            `backbone_spec`, `transform`, `dataset_meta`, `dtype`, `fingerprint` and `precision`.

    Returns:
        The complete store, opened and checked. An existing complete store of the same request is reused as is;
        an existing store of another request raises `StoreError` naming the differing field.
    """
    if request is None:
        if backbone_spec is None or transform is None or dataset_meta is None:
            raise TypeError("extract_features needs request= or backbone_spec=, transform= and dataset_meta=")
        request = StoreRequest(backbone_spec, dict(transform), dict(dataset_meta), dtype, precision, fingerprint)
    check_dtype(request.dtype)
    tap = backbone_or_tap if isinstance(backbone_or_tap, BackboneTap) else BackboneTap(backbone_or_tap)
    tap.eval()
    if device is None:
        device = next(tap.model.parameters()).device
    request = replace(request, precision=resolve_precision(request.precision, device))
    precision, dtype = request.precision, request.dtype
    out = Path(out_dir)
    count = len(dataset)  # type: ignore[arg-type]
    meta = request.meta(tap, count)
    expect = compared_fields(meta)

    ctx = current()
    sharded = shard and ctx.distributed
    if _prepare_on_rank_0(out, meta, expect, overwrite, sharded):
        return open_store(out, expect)

    # This process's rows: all of them, or under torchrun a contiguous shard of whole chunks of whole batches
    # (each image lands in the same batch as in a single process, and resumes find the same chunks).
    chunk = -(-max(chunk_size, 1) // batch_size) * batch_size
    rows = contiguous_shard(count, chunk, ctx.rank, ctx.world_size) if sharded else range(count)
    progress_file = out / (rank_progress_file(ctx.rank) if sharded else PROGRESS_FILE)

    np_dtype, torch_dtype = DTYPES[dtype]
    token_shape = tuple(meta["shapes"]["tokens"])
    files: list[_RowFile] = []
    try:  # from here on a failure is also reported to the other ranks, which are waiting for this one
        done = _resume_point(out, rows)
        files = [_RowFile(out / name) for name in (TOKENS_FILE, PRE_LOGITS_FILE, LABELS_FILE)]
        position = _extract_rows(
            tap, dataset, rows, done, files, progress_file, device=device, precision=precision, dtype=dtype,
            np_dtype=np_dtype, torch_dtype=torch_dtype, token_shape=token_shape, batch_size=batch_size,
            num_workers=num_workers, chunk_size=chunk_size, on_chunk=on_chunk, sharded=sharded,
            bar=dict(total=len(rows), initial=done - rows.start, unit="img", disable=not progress_enabled(progress),
                     desc=f"extract {out.name}" + (f" (rank {ctx.rank}'s {len(rows)} of {count})" if sharded else "")),
        )
        if position != rows.stop:
            raise StoreError(f"the dataset yielded {position} images but has length {count}")
    except BaseException as error:
        if sharded:  # print this rank's error, tell the others why their wait for it ends, stop with the error
            report_before_telling(error)
            with contextlib.suppress(DistributedError):
                _gather_failures(first_line(error), out)
        raise
    finally:
        for file in files:
            file.close()
    if sharded:
        failures = _gather_failures(None, out)
        if failures:
            raise DistributedError("; ".join(f"rank {rank} failed extracting {out}: {message}"
                                             for rank, message in failures))
    if ctx.is_main or not sharded:
        atomic_write_json(out / PROGRESS_FILE, {"done": count})
        for file in out.glob(RANK_PROGRESS_GLOB):
            file.unlink()
        atomic_write_json(out / COMPLETE_FILE, {"count": count, "weights_sha256": meta["weights_sha256"]})
    if sharded:
        barrier(f"the completion marker of feature store {out}")
    return open_store(out, expect)


def _prepare_on_rank_0(out: Path, meta: dict[str, Any], expect: dict[str, Any], overwrite: bool,
                       sharded: bool) -> bool:
    """Check, replace or create the store's files — on rank 0 alone when `sharded`, which then tells the others
    — and say whether a complete store of this request is there already."""
    ctx = current()
    complete, failed = False, None
    if ctx.is_main or not sharded:
        try:
            complete = _prepare(out, meta, expect, overwrite)
        except (StoreError, OSError) as error:
            if not sharded:
                raise
            failed = error
            report_before_telling(error)
    if sharded:
        complete, message = broadcast_object(
            (complete, None if failed is None else first_line(failed)), f"the state of feature store {out}"
        )
        if failed is not None:
            raise failed
        if message is not None:
            raise StoreError(f"rank 0 could not prepare feature store {out}: {message}")
    return complete


def _resume_point(out: Path, rows: range) -> int:
    """The first row of `rows` not yet written: after the rows any progress file records (this rank's finished
    chunks, or those of an earlier run with another number of ranks or a single process)."""
    done = rows.start
    for start, stop in written_ranges(out):
        if start <= done < stop:
            done = min(stop, rows.stop)
    return done


def _gather_failures(message: str | None, out: Path) -> list[tuple[int, str]]:
    """Every rank's failure message (None: its shard is written), as (rank, message) for the failed ones."""
    every = all_gather_object(message, f"the outcome of every rank's part of feature store {out}")
    return [(rank, text) for rank, text in enumerate(every) if text is not None]


def _prepare(out: Path, meta: dict[str, Any], expect: Mapping[str, Any], overwrite: bool) -> bool:
    """Check, replace or create the store's files; True when a complete store of this request is there."""
    fresh = True
    if (out / META_FILE).is_file():
        try:
            check_meta(read_meta(out), expect, out)
        except StoreError:
            if not overwrite:
                raise
            _remove_store(out)
        else:
            if is_complete(out):
                return True
            fresh = not written_ranges(out)
    elif out.exists() and any(out.iterdir()) and not overwrite and not (out / TOKENS_FILE).exists():
        raise StoreError(f"{out} exists and is not a feature store; choose an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)

    np_dtype = DTYPES[meta["dtype"]][0]
    token_shape, pre_shape = tuple(meta["shapes"]["tokens"]), tuple(meta["shapes"]["pre_logits"])
    count = token_shape[0]
    if fresh:
        _remove_store(out)
        atomic_write_json(out / META_FILE, meta)  # first: from now on the directory says what it is for
        for name, dtype, shape in ((TOKENS_FILE, np_dtype, token_shape), (PRE_LOGITS_FILE, np_dtype, pre_shape),
                                   (LABELS_FILE, np.int64, (count,))):
            array = open_memmap(out / name, mode="w+", dtype=dtype, shape=shape)
            array.flush()
            del array
        atomic_write_json(out / PROGRESS_FILE, {"done": 0})
        return False
    shapes = [np.load(out / name, mmap_mode="r").shape for name in (TOKENS_FILE, PRE_LOGITS_FILE, LABELS_FILE)]
    if shapes != [token_shape, pre_shape, (count,)]:
        raise StoreError(f"feature store {out} is corrupt (array shapes differ from meta.json); overwrite it")
    return False


class _RowFile:
    """Whole rows of one `.npy` array written in place with `os.pwrite`, made durable with `fsync`.

    Why not a writable memory map: ranks on several nodes write neighbouring rows of one file on a shared file
    system; a memory map writes back whole pages (clobbering a neighbour's bytes at a shard boundary), while
    `pwrite` writes exactly the rows' bytes.
    """

    def __init__(self, path: Path) -> None:
        array = np.load(path, mmap_mode="r")
        self.offset = int(array.offset)
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self.dtype = array.dtype
        del array
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        offset = self.offset + start * self.row_bytes
        while data:
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _extract_rows(
    tap: BackboneTap, dataset: Dataset, rows: range, done: int, files: list[_RowFile], progress_file: Path, *,
    device: torch.device | str, precision: str, dtype: str, np_dtype: np.dtype, torch_dtype: torch.dtype,
    token_shape: tuple[int, ...], batch_size: int, num_workers: int, chunk_size: int,
    on_chunk: Callable[[int], None] | None, sharded: bool, bar: dict[str, Any],
) -> int:
    """Run the backbone over images [done, rows.stop) and write their rows; returns the position reached."""
    tokens, pre_logits, labels = files
    loader = DataLoader(
        Subset(dataset, range(done, rows.stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
    )

    def commit(position: int) -> None:
        for file in files:
            file.sync()
        record = {"start": rows.start, "done": position} if sharded else {"done": position}
        atomic_write_json(progress_file, record)
        if on_chunk is not None:
            on_chunk(position)

    # The backbone runs in this thread; the row writes and syncs (disk writes) run in a writer thread, so they
    # overlap with the next batch's forward. Both release the GIL.
    pending: Queue = Queue(maxsize=2)
    failure: list[BaseException] = []

    def write() -> None:
        last_commit = done
        while (item := pending.get()) is not None:
            if failure:
                continue  # drain: the main thread raises the failure
            start, stop, token_rows, pre_rows, label_rows = item
            try:
                tokens.write(start, token_rows)
                pre_logits.write(start, pre_rows)
                labels.write(start, label_rows)
                if stop - last_commit >= chunk_size:
                    commit(stop)
                    last_commit = stop
            except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
                failure.append(error)

    writer = threading.Thread(target=write, name="vqt-store-writer", daemon=True)
    writer.start()
    position = done
    try:
        with tqdm(**bar) as progress_bar:
            for images, batch_labels in loader:
                if failure:
                    break
                with autocast(precision, device):
                    tapped = tap(images.to(device, non_blocking=True))
                batch = images.shape[0]
                shape = (batch, *token_shape[1:])
                if (
                    tuple(tapped.tokens[0].shape[1:]) != token_shape[2:]
                    or len(tapped.tokens) != token_shape[1]
                ):
                    raise StoreError(
                        f"the backbone produced {len(tapped.tokens)} blocks of tokens of shape "
                        f"{tuple(tapped.tokens[0].shape[1:])}, expected {token_shape[1:]} (does the image size "
                        "of the dataset differ from the backbone's?)"
                    )
                block_tokens = torch.empty(shape, dtype=torch_dtype, device=tapped.pre_logits.device)
                for layer, layer_tokens in enumerate(tapped.tokens):
                    block_tokens[:, layer].copy_(layer_tokens)  # converts to the store dtype in the same pass
                pre = tapped.pre_logits.to(torch_dtype)
                if dtype == "bfloat16":
                    block_tokens, pre = block_tokens.view(torch.int16), pre.view(torch.int16)
                end = position + batch
                pending.put(
                    (
                        position,
                        end,
                        block_tokens.cpu().numpy().view(np_dtype),
                        pre.cpu().numpy().view(np_dtype),
                        torch.as_tensor(batch_labels).to(torch.int64).numpy(),
                    )
                )
                position = end
                progress_bar.update(batch)
    finally:
        pending.put(None)
        writer.join()
    if failure:
        raise failure[0]
    if position == rows.stop:
        commit(position)
    return position


def clear_store(path: str | Path) -> None:
    """Delete a store directory (only if it looks like one)."""
    path = Path(path)
    if (path / META_FILE).is_file() or (path / TOKENS_FILE).is_file():
        shutil.rmtree(path)
