"""One no-autograd backbone pass over a dataset, written to a feature store in resumable chunks.

Why chunks: extracting a large split takes long; an interruption (crash, pre-emption, Ctrl-C) must cost at most
one chunk. After each chunk the arrays are flushed and `progress.json` is replaced atomically; a rerun with the
same request continues from there. The `COMPLETE` marker is written last, so a half-written store is never
opened as a complete one (`open_store` refuses it).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vqt.backbone.sources import describe, weights_fingerprint
from vqt.backbone.tap import BackboneTap
from vqt.errors import StoreError
from vqt.features.store import (
    COMPLETE_FILE,
    DTYPES,
    LABELS_FILE,
    META_FILE,
    PRE_LOGITS_FILE,
    PROGRESS_FILE,
    TOKENS_FILE,
    FeatureStore,
    atomic_write_json,
    check_dtype,
    check_meta,
    compared_fields,
    is_complete,
    open_store,
    read_meta,
    read_progress,
    store_meta,
)
from vqt.precision import autocast, resolve_precision

STORE_FILES = (COMPLETE_FILE, PROGRESS_FILE, TOKENS_FILE, PRE_LOGITS_FILE, LABELS_FILE, META_FILE)


def num_tokens(model: nn.Module) -> int:
    """N, the ordinary tokens a block sees: prefix tokens (CLS, registers) plus patches."""
    return int(model.patch_embed.num_patches) + int(model.num_prefix_tokens)


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
    """The metadata a store for this request has; pass it as `expect` to `open_store` to check a store.

    `precision` is the resolved compute precision of the backbone pass ('fp32' or 'bf16'): recorded and compared,
    since bf16 features differ from fp32 ones (the storage `dtype` is a separate field)."""
    model = backbone_or_tap.model if isinstance(backbone_or_tap, BackboneTap) else backbone_or_tap
    architecture = describe(model)
    return store_meta(
        backbone_spec=backbone_spec,
        weights_sha256=fingerprint or weights_fingerprint(model),
        architecture=architecture,
        img_size=architecture["img_size"],
        transform=transform,
        dataset_meta=dataset_meta,
        count=count,
        dtype=dtype,
        num_tokens=num_tokens(model),
        precision=precision,
    )


def _remove_store(path: Path) -> None:
    for name in STORE_FILES:
        (path / name).unlink(missing_ok=True)


def extract_features(
    backbone_or_tap: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    backbone_spec: str,
    transform: Mapping[str, Any],
    dataset_meta: Mapping[str, Any],
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

    Returns:
        The complete store, opened and checked. An existing complete store of the same request is reused as is;
        an existing store of another request raises `StoreError` naming the differing field.
    """
    check_dtype(dtype)
    tap = backbone_or_tap if isinstance(backbone_or_tap, BackboneTap) else BackboneTap(backbone_or_tap)
    tap.eval()
    if device is None:
        device = next(tap.model.parameters()).device
    precision = resolve_precision(precision, device)
    out = Path(out_dir)
    count = len(dataset)  # type: ignore[arg-type]
    meta = request_meta(
        tap,
        backbone_spec=backbone_spec,
        transform=transform,
        dataset_meta=dataset_meta,
        count=count,
        dtype=dtype,
        fingerprint=fingerprint,
        precision=precision,
    )
    expect = compared_fields(meta)

    done = 0
    if (out / META_FILE).is_file():
        try:
            check_meta(read_meta(out), expect, out)
        except StoreError:
            if not overwrite:
                raise
            _remove_store(out)
        else:
            if is_complete(out):
                return open_store(out, expect)
            done = read_progress(out)
    elif out.exists() and any(out.iterdir()) and not overwrite and not (out / TOKENS_FILE).exists():
        raise StoreError(f"{out} exists and is not a feature store; choose an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)

    np_dtype, torch_dtype = DTYPES[dtype]
    token_shape, pre_shape = tuple(meta["shapes"]["tokens"]), tuple(meta["shapes"]["pre_logits"])
    if done == 0:
        _remove_store(out)
        atomic_write_json(out / META_FILE, meta)  # first: from now on the directory says what it is for
        tokens = open_memmap(out / TOKENS_FILE, mode="w+", dtype=np_dtype, shape=token_shape)
        pre_logits = open_memmap(out / PRE_LOGITS_FILE, mode="w+", dtype=np_dtype, shape=pre_shape)
        labels = open_memmap(out / LABELS_FILE, mode="w+", dtype=np.int64, shape=(count,))
        atomic_write_json(out / PROGRESS_FILE, {"done": 0})
    else:
        tokens = np.load(out / TOKENS_FILE, mmap_mode="r+")
        pre_logits = np.load(out / PRE_LOGITS_FILE, mmap_mode="r+")
        labels = np.load(out / LABELS_FILE, mmap_mode="r+")
        if tokens.shape != token_shape or pre_logits.shape != pre_shape or labels.shape != (count,):
            raise StoreError(
                f"feature store {out} is corrupt (array shapes differ from meta.json); overwrite it"
            )

    loader = DataLoader(
        Subset(dataset, range(done, count)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
    )

    def commit(position: int) -> None:
        for array in (tokens, pre_logits, labels):
            array.flush()
        atomic_write_json(out / PROGRESS_FILE, {"done": position})
        if on_chunk is not None:
            on_chunk(position)

    # The backbone runs in this thread; copies into the memory maps and the flushes (disk writes) run in a
    # writer thread, so they overlap with the next batch's forward. Both release the GIL.
    pending: Queue = Queue(maxsize=2)
    failure: list[BaseException] = []

    def write() -> None:
        last_commit = done
        while (item := pending.get()) is not None:
            if failure:
                continue  # drain: the main thread raises the failure
            start, stop, token_rows, pre_rows, label_rows = item
            try:
                tokens[start:stop] = token_rows
                pre_logits[start:stop] = pre_rows
                labels[start:stop] = label_rows
                if stop - last_commit >= chunk_size:
                    commit(stop)
                    last_commit = stop
            except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
                failure.append(error)

    writer = threading.Thread(target=write, name="vqt-store-writer", daemon=True)
    writer.start()
    position = done
    try:
        with tqdm(
            total=count, initial=done, unit="img", desc=f"extract {out.name}", disable=not progress
        ) as bar:
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
                bar.update(batch)
    finally:
        pending.put(None)
        writer.join()
    if failure:
        raise failure[0]
    if position != count:
        raise StoreError(f"the dataset yielded {position} images but has length {count}")
    commit(position)
    atomic_write_json(out / COMPLETE_FILE, {"count": count, "weights_sha256": meta["weights_sha256"]})
    return open_store(out, expect)


def clear_store(path: str | Path) -> None:
    """Delete a store directory (only if it looks like one)."""
    path = Path(path)
    if (path / META_FILE).is_file() or (path / TOKENS_FILE).is_file():
        shutil.rmtree(path)
