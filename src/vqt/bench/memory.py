"""Count what a training step costs in memory: bytes autograd saves for backward, and peak process memory.

`SavedActivations` uses `torch.autograd.graph.saved_tensors_hooks` to see every tensor autograd keeps for
backward, counts each storage once, and leaves out parameters and buffers (they exist anyway), so the number is
the activation memory a method adds per step. Everything else autograd keeps counts, the bf16 weight casts autocast
makes every step and their slices included (`cast_bytes` names the part recognised as casts of whole parameters:
a per-step constant, not a per-image cost). The query path's low-precision block copies, made once and reused
(`vqt.backbone.query_path.compute_block`), are persistent like the weights: left out of `bytes` and reported as
`persistent_bytes`. Peak memory is the CUDA allocator's peak on a GPU and the process' peak RSS on the CPU,
measured in a fresh process per case so one case's peak cannot hide another's.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vqt.backbone.query_path import compute_copies


class SavedActivations:
    """Context manager: total bytes of distinct non-parameter storages saved for backward inside it.

    `cast_bytes`: the part of `bytes` that is low-precision copies of the parameters (autocast's weight casts),
    recognised by shape and value (`torch.equal` with the parameter cast to the copy's dtype; transposed too).
    """

    def __init__(self, modules: Iterable[nn.Module] = ()) -> None:
        self._modules = list(modules)
        self._copies: dict[int, int] = {}  # storage -> bytes of the persistent low-precision block copies
        self._excluded: set[int] = set()
        self._by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for module in self._modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                self._excluded.add(tensor.untyped_storage().data_ptr())
            for parameter in module.parameters():
                if parameter.is_floating_point():
                    self._by_shape.setdefault(tuple(parameter.shape), []).append(parameter)
        self._seen: dict[int, int] = {}
        self._casts: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda saved: saved)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self._excluded:
            self._seen[pointer] = max(self._seen.get(pointer, 0), storage.nbytes())
            if pointer not in self._casts and self._is_cast(tensor):
                self._casts.add(pointer)
        return tensor

    def _is_cast(self, tensor: torch.Tensor) -> bool:
        if tensor.dtype not in (torch.bfloat16, torch.float16):
            return False
        views = [tensor.detach()]
        if tensor.dim() == 2:
            views.append(tensor.detach().t())  # a linear layer saves its weight transposed
        with torch.no_grad():
            return any(p.dtype != view.dtype and torch.equal(p.detach().to(view.dtype), view)
                       for view in views for p in self._by_shape.get(tuple(view.shape), ()))

    @property
    def bytes(self) -> int:
        """Bytes saved for backward in this step, weight casts and slices included, persistent copies not."""
        return sum(size for pointer, size in self._seen.items() if pointer not in self._copies)

    @property
    def cast_bytes(self) -> int:
        return sum(self._seen[pointer] for pointer in self._casts if pointer not in self._copies)

    @property
    def persistent_bytes(self) -> int:
        """Bytes of the query path's low-precision block copies (made once, like a cast backbone)."""
        return sum(self._copies.values())

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        for module in self._modules:  # the copies may have been made inside this step (the first one)
            for block in compute_copies(module):
                for tensor in [*block.parameters(), *block.buffers()]:
                    storage = tensor.untyped_storage()
                    self._copies[storage.data_ptr()] = storage.nbytes()


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM).

    Without it the peak of a process includes whatever it did before the step (loading or converting weights).
    Returns False where the kernel does not allow it; the peak then covers the whole process life.
    """
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last `reset_peak_rss` (or since the process started)."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def _child(target: Callable[..., dict[str, Any]], args: tuple, queue: multiprocessing.Queue) -> None:
    try:
        queue.put(("ok", target(*args)))
    except BaseException as error:  # report, don't hang the parent
        queue.put(("error", f"{type(error).__name__}: {error}"))


def run_isolated(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `target(*args)` in a fresh spawned process (its own peak RSS); return its result dict."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    status, result = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(result)
    return result
