"""Which process this is in a `torchrun` launch, and the few collectives every command needs.

Why one module: a command must behave the same under `torchrun --nproc_per_node N` as in a plain process, so
everything rank-dependent (the process group, this rank's device, who prints, waiting for the others with a
deadline) is decided here, once, from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Outside torchrun `init_from_env` returns a single-process context and nothing else changes.

Backends: gloo on CPU; on CUDA the default group is `cpu:gloo,cuda:nccl` (torch's multi-backend group: CUDA
tensors go through NCCL, CPU tensors through gloo), and each rank uses the GPU numbered by its LOCAL_RANK.
Coordination (barriers, comparing arguments) runs on a separate gloo group, because only gloo's
`monitored_barrier` reports which rank failed to arrive within a deadline. The deadline of every collective is
`VQT_DIST_TIMEOUT` seconds (default `DEFAULT_TIMEOUT_S`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vqt.distributed import launched_by_torchrun
from vqt.errors import VQTError, first_line, user_message

TIMEOUT_ENV = "VQT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo; long enough for a rank that finishes its shard late

log = logging.getLogger(__name__)


class DistributedError(VQTError):
    """A distributed launch that cannot go on: a rank that did not arrive in time, ranks that disagree."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the launch (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes shared files, prints tables and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1


_SINGLE = DistContext()
_current: DistContext = _SINGLE
_coordination: Any = None  # the gloo group barriers and argument checks run on
_reported: list[BaseException] = []  # errors whose line `report_before_telling` printed


def timeout_seconds() -> float:
    """The deadline of a collective: `VQT_DIST_TIMEOUT` seconds, or `DEFAULT_TIMEOUT_S`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError as error:
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from error
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {text}")
    return value


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError as error:
        raise DistributedError(f"environment variable {name}={os.environ[name]!r} is not an integer") from error


def wants_cuda(device_choice: str | None) -> bool:
    """Whether a --device value means this rank's GPU (auto with CUDA present, cuda, cuda:N)."""
    if device_choice in (None, "auto"):
        return torch.cuda.is_available()
    return str(device_choice).startswith("cuda")


def init_from_env(device_choice: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (once); a no-op outside torchrun.

    `device_choice` is the command's --device when the command line gave one (None: not given). It picks the
    backend (gloo alone for cpu) and this rank's device (`cuda:LOCAL_RANK`). A group someone else already
    initialised (a test, a notebook) is adopted as it is.
    """
    global _current, _coordination
    if _current.backend is not None:
        return _current
    if not dist.is_initialized() and not launched_by_torchrun():
        _current = _SINGLE
        return _current
    timeout = timedelta(seconds=timeout_seconds())
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    use_cuda = wants_cuda(device_choice)
    if use_cuda and not torch.cuda.is_available():
        raise DistributedError(f"--device {device_choice} asked for, but no CUDA device is available")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); "
            "launch at most one process per GPU (torchrun --nproc_per_node)"
        )
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timeout,
                                    device_id=device if use_cuda else None)
        except (RuntimeError, ValueError) as error:
            raise DistributedError(f"cannot join the torchrun process group ({first_line(error)})") from error
    backend = str(dist.get_backend())
    _coordination = dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    _current = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           device=device, backend=backend)
    return _current


def current() -> DistContext:
    """The context `init_from_env` made (a single-process one before, or outside torchrun)."""
    return _current


def shutdown() -> None:
    """Leave the process group (end of a command that finished normally on every rank)."""
    global _current, _coordination
    if _current.backend is not None and dist.is_initialized():
        dist.destroy_process_group()
    _current, _coordination = _SINGLE, None


def rank_device(device_choice: str | None) -> torch.device:
    """The device a --device value means on this rank: under torchrun `auto`/`cuda` is `cuda:LOCAL_RANK`.

    An explicit `cuda:N` under a multi-process launch is refused: every rank would pick the same GPU.
    """
    ctx = current()
    if device_choice in (None, "auto"):
        if ctx.distributed:
            return ctx.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device_choice)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VQTError(f"--device {name} asked for, but no CUDA device is available")
    if ctx.distributed and name.startswith("cuda"):
        if name != "cuda":
            raise DistributedError(f"--device {name} under torchrun: every rank would use the same GPU; pass "
                                   "--device cuda (each rank then uses cuda:LOCAL_RANK)")
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def barrier(what: str, timeout: float | None = None) -> None:
    """Wait until every rank has reached `what` (a no-op in a single process).

    Raises `DistributedError` naming `what`, the deadline and the rank(s) that did not arrive: a rank that
    failed (its own error is printed by that rank) or is still working after `VQT_DIST_TIMEOUT` seconds.
    """
    ctx = current()
    if not ctx.distributed:
        return
    seconds = timeout_seconds() if timeout is None else timeout
    started = time.monotonic()
    try:
        dist.monitored_barrier(group=_coordination, timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    except RuntimeError as error:
        raise DistributedError(
            f"rank {ctx.rank} stopped waiting for all {ctx.world_size} ranks to reach {what!r} after "
            f"{time.monotonic() - started:.0f} s (deadline {seconds:g} s; {first_line(error)}): another rank "
            f"failed (its error is printed above) or, past the deadline, is still working (raise {TIMEOUT_ENV} "
            "if it is only slow)"
        ) from error


def all_gather_object(value: Any, what: str) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; `[value]` in a single process."""
    ctx = current()
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    try:
        dist.all_gather_object(gathered, value, group=_coordination)
    except RuntimeError as error:
        raise DistributedError(
            f"rank {ctx.rank} could not exchange {what} with the other ranks (deadline {timeout_seconds():g} s; "
            f"{first_line(error)}): another rank failed (its error is printed above) or, past the deadline, is "
            f"still working (raise {TIMEOUT_ENV} if it is only slow)"
        ) from error
    return gathered


def broadcast_object(value: Any, what: str) -> Any:
    """Rank 0's `value` (picklable) on every rank; `value` itself in a single process."""
    ctx = current()
    if not ctx.distributed:
        return value
    holder = [value if ctx.is_main else None]
    try:
        dist.broadcast_object_list(holder, src=0, group=_coordination)
    except RuntimeError as error:
        raise DistributedError(
            f"rank {ctx.rank} did not receive {what} from rank 0 (deadline {timeout_seconds():g} s; "
            f"{first_line(error)}): rank 0 failed (its error is printed above) or, past the deadline, is still "
            f"working (raise {TIMEOUT_ENV} if it is only slow)"
        ) from error
    return holder[0]


def report_before_telling(error: BaseException) -> None:
    """Print this rank's `vqt: error: [rank R/W] ...` line now, before the other ranks hear of the failure: once
    they do, one of them may exit non-zero and torchrun then stops every rank, so a line printed later (by the
    CLI, on the way out) could be lost. The CLI does not print an error reported here a second time."""
    if isinstance(error, (VQTError, OSError)):
        print(f"vqt: error: {log_prefix()}{user_message(error)}", file=sys.stderr, flush=True)
        _reported.append(error)


def already_reported(error: BaseException) -> bool:
    """Whether `report_before_telling` printed this error's line already."""
    return any(error is reported for reported in _reported)


def check_same_arguments(argv: Sequence[str]) -> None:
    """Refuse a launch whose ranks got different command lines (they would disagree about the work)."""
    every = all_gather_object(list(argv), "the command-line arguments")
    for rank, other in enumerate(every):
        if other != every[0]:
            raise DistributedError(
                f"the ranks were launched with different arguments: rank 0 has `{' '.join(every[0])}`, rank "
                f"{rank} has `{' '.join(other)}`; launch every rank with the same command"
            )


def progress_enabled(requested: bool = True) -> bool:
    """Show a progress bar only when asked for and on rank 0 (N ranks would draw N bars over each other)."""
    return bool(requested) and current().is_main


def main_print(*values: Any, **kwargs: Any) -> None:
    """`print` on rank 0 only (tables and summaries: one copy, not one per rank)."""
    if current().is_main:
        print(*values, **kwargs)


def log_prefix() -> str:
    """`[rank R/W] ` under a multi-process launch, empty otherwise: prefixes log records and error lines."""
    ctx = current()
    return f"[rank {ctx.rank}/{ctx.world_size}] " if ctx.distributed else ""


def configure_logging(level: str | int) -> None:
    """The CLI's logging set-up: records name the rank when there are several."""
    logging.basicConfig(level=level, format=f"{log_prefix()}%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- the default process group, as training sees it


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def use_ddp(requested: bool | None) -> bool:
    """None: DDP when a process group with more than one rank is initialised; False: never (e.g. the sweep, whose
    ranks train different units); True: required."""
    if requested is False:
        return False
    active = world()[1] > 1
    if requested and not active:
        raise VQTError("distributed training asked for, but no process group of more than one rank is initialised "
                       "(launch with torchrun --nproc_per_node N)")
    return active


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over the ranks (float64; on the process group's device for NCCL)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    on = device if device is not None and dist.get_backend() != "gloo" else torch.device("cpu")
    tensor = torch.tensor(list(values), dtype=torch.float64, device=on)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()
