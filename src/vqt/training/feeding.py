"""Feeding a feature store to the device: the one function every store trainer and evaluator takes batches from.

Two ways, chosen by `store_device` (`resolve_store_device` picks one for `auto`):
- resident (`'cuda'`): the whole store (tokens, pre-logits, labels) is copied to the device once
  (`ResidentStore`) and every batch is a gather there by index: no host work, no transfer per batch. A resident
  store on the CPU is the same code on CPU tensors (used by the tests, and harmless on a CPU run).
- streamed (`'cpu'`): a background thread reads each batch from the memory-mapped store (page-ins and gathers
  release the GIL) and, for a CUDA device, fills one of two pinned host buffers and copies it with
  `non_blocking=True` on a side CUDA stream, so the next batch's read and copy overlap this batch's compute.
  On a CPU device there is no pinning and no stream: the same thread yields the plain tensors.

Either way a batch arrives as (TapOutput on the device, labels on the device) with the values `FeatureStore.batch`
gives (a gather copies values exactly): training is bit-for-bit the same whichever way it was fed
(tests/training/test_feeding.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from queue import Queue

import numpy as np
import torch

from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.features.store import FeatureStore

STORE_DEVICES = ("auto", "cpu", "cuda")
# `auto` keeps a store on the GPU only when it takes at most this fraction of the free memory: the rest is left
# for the query path's activations (they grow with the batch and with the grid's configurations) and the
# allocator's fragmentation.
RESIDENT_FRACTION = 0.5
PREFETCH_DEPTH = 2  # batches read ahead; also the number of pinned buffers (double-buffering)


def store_nbytes(store: FeatureStore | ResidentStore) -> int:
    """Bytes a resident copy of `store` takes on the device (tokens, pre-logits, labels)."""
    return int(store.tokens.nbytes + store.pre_logits.nbytes + len(store) * 8)


def resolve_store_device(choice: str, store_nbytes: int, device: torch.device | str) -> str:
    """Where the store's batches are gathered: 'cuda' (resident on the device) or 'cpu' (streamed from the host).

    `auto`: 'cuda' when `device` is a CUDA device and the store fits in `RESIDENT_FRACTION` of its free memory
    (`torch.cuda.mem_get_info`), else 'cpu'.
    """
    if choice not in STORE_DEVICES:
        raise VQTError(f"--store-device must be one of {', '.join(STORE_DEVICES)}, not {choice!r}")
    device = torch.device(device)
    if choice == "cuda" and device.type != "cuda":
        raise VQTError(f"--store-device cuda needs a CUDA device; training runs on {device}")
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "cpu"
    free, _total = torch.cuda.mem_get_info(device)
    return "cuda" if store_nbytes <= RESIDENT_FRACTION * free else "cpu"


class ResidentStore:
    """A feature store copied whole onto `device`; `batch` gathers there by index (same values as the store's).

    Copied in row chunks, so the host never holds a second full copy.
    """

    def __init__(self, store: FeatureStore, device: torch.device | str, chunk: int = 256) -> None:
        self.device = torch.device(device)
        self.meta = store.meta
        first, _ = store.batch(np.arange(min(1, len(store))))
        self.tokens = torch.empty(
            (len(store), store.depth, *first.tokens[0].shape[1:]), dtype=first.tokens[0].dtype, device=self.device
        )
        self.pre_logits = torch.empty(
            (len(store), *first.pre_logits.shape[1:]), dtype=first.pre_logits.dtype, device=self.device
        )
        labels = []
        for start in range(0, len(store), chunk):
            rows = np.arange(start, min(start + chunk, len(store)))
            tapped, chunk_labels = store.batch(rows)
            self.tokens[start : start + len(rows)].copy_(torch.stack(tapped.tokens, dim=1))
            self.pre_logits[start : start + len(rows)].copy_(tapped.pre_logits)
            labels.append(chunk_labels)
        self.labels = torch.cat(labels).to(self.device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[TapOutput, torch.Tensor]:
        """The images at `index` (an int64 tensor on the store's device), gathered on the device."""
        tokens = self.tokens.index_select(0, index)
        tapped = TapOutput(tokens=list(tokens.unbind(1)), pre_logits=self.pre_logits.index_select(0, index))
        return tapped, self.labels.index_select(0, index)


AnyStore = FeatureStore | ResidentStore


def place_store(store: AnyStore, store_device: str, device: torch.device | str) -> AnyStore:
    """`store` where its batches will come from: made resident on `device` for `store_device='cuda'`.

    Each trainer call makes its own resident copy; to share one across calls, pass a `ResidentStore` instead.
    """
    if store_device not in ("cpu", "cuda"):
        raise VQTError(f"store_device must be 'cpu' or 'cuda' (resolved), not {store_device!r}")
    device = torch.device(device)
    if store_device == "cuda" and device.type != "cuda":
        raise VQTError(f"--store-device cuda needs a CUDA device; training runs on {device}")
    if store_device == "cuda" and not isinstance(store, ResidentStore):
        return ResidentStore(store, device)
    return store


def prefetch(iterable: Iterable, depth: int = PREFETCH_DEPTH) -> Iterator:
    """Produce the next items of `iterable` in a thread, `depth` ahead; errors re-raised in the consumer."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            for item in iterable:
                queue.put(item)
        except BaseException as error:  # re-raised in the consumer
            failure.append(error)
        finally:
            queue.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        item = queue.get()
        if item is done:
            break
        yield item
    thread.join()
    if failure:
        raise failure[0]


class _PinnedSlots:
    """Pinned host buffers for `PREFETCH_DEPTH` batches and their side-stream copies to a CUDA device.

    A slot is refilled only after the copy out of it has finished (its event), so the thread overlaps reading
    batch i+1 with the copy and compute of batch i without ever overwriting memory still being copied.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(PREFETCH_DEPTH)]
        self.events: list[torch.cuda.Event | None] = [None] * PREFETCH_DEPTH
        self.count = 0

    def _pinned(self, slot: int, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """This slot's pinned buffer `name` viewed as `shape` (grown when a batch needs more)."""
        size = int(np.prod(shape))
        buffer = self.buffers[slot].get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = torch.empty(size, dtype=dtype, pin_memory=True)
            self.buffers[slot][name] = buffer
        return buffer[:size].view(shape)

    def send(self, tapped: TapOutput, labels: torch.Tensor) -> tuple[TapOutput, torch.Tensor, torch.cuda.Event]:
        """Copy one batch into a free slot and start its transfer; the event marks the transfer's end."""
        slot = self.count % PREFETCH_DEPTH
        self.count += 1
        event = self.events[slot]
        if event is not None:
            event.synchronize()  # the copy out of this slot's buffers has finished
        first = tapped.tokens[0]
        tokens = self._pinned(slot, "tokens", (len(labels), len(tapped.tokens), *first.shape[1:]), first.dtype)
        torch.stack(tapped.tokens, dim=1, out=tokens)
        pre = self._pinned(slot, "pre_logits", tuple(tapped.pre_logits.shape), tapped.pre_logits.dtype)
        pre.copy_(tapped.pre_logits)
        host_labels = self._pinned(slot, "labels", tuple(labels.shape), labels.dtype)
        host_labels.copy_(labels)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):  # this thread's current device
            sent = (
                tokens.to(self.device, non_blocking=True),
                pre.to(self.device, non_blocking=True),
                host_labels.to(self.device, non_blocking=True),
            )
            done = torch.cuda.Event()
            done.record(self.stream)
        self.events[slot] = done
        on_device = TapOutput(tokens=list(sent[0].unbind(1)), pre_logits=sent[1])
        return on_device, sent[2], done


def _streamed(store: FeatureStore, batches: Sequence[np.ndarray], device: torch.device) -> Iterator:
    if device.type != "cuda":  # CPU: the thread reads the store; no pinning, no stream
        for tapped, labels in prefetch(store.batch(index) for index in batches):
            yield TapOutput([t.to(device) for t in tapped.tokens], tapped.pre_logits.to(device)), labels.to(device)
        return
    slots = _PinnedSlots(device)
    for tapped, labels, done in prefetch(slots.send(*store.batch(index)) for index in batches):
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        for tensor in (*tapped.tokens, tapped.pre_logits, labels):
            tensor.record_stream(current)  # allocated on the side stream, used on this one
        yield tapped, labels


def _gathered(store: ResidentStore, batches: Sequence[np.ndarray]) -> Iterator:
    if not batches:
        return
    # The epoch's whole order goes to the device in one copy; each batch is then a slice of it.
    order = torch.from_numpy(np.concatenate(batches).astype(np.int64)).to(store.device)
    for index in order.split([len(b) for b in batches]):
        yield store.batch(index)


def feed_batches(
    store: AnyStore, batches: Sequence[np.ndarray], device: torch.device | str
) -> Iterator[tuple[TapOutput, torch.Tensor]]:
    """(TapOutput, labels) on `device` for each index batch: gathered on the device from a `ResidentStore`,
    else read ahead in a thread (and, for CUDA, copied through pinned buffers on a side stream)."""
    device = torch.device(device)
    if isinstance(store, ResidentStore):
        if store.device != device:
            raise VQTError(f"the store is resident on {store.device}, but training runs on {device}")
        return _gathered(store, batches)
    return _streamed(store, batches, device)


def sequential_batches(num_items: int, batch_size: int) -> list[np.ndarray]:
    """Index batches over the store in order (what evaluation reads)."""
    return [np.arange(s, min(s + batch_size, num_items)) for s in range(0, num_items, batch_size)]
