"""Claim files: workers that share a run folder split its units of work without a coordinator.

A unit is claimed by creating a file exclusively (`os.open(O_CREAT | O_EXCL)`), which the file system grants to
exactly one creator — on a local disk and on NFSv3+/Lustre/GPFS alike — so ranks of one `torchrun` and independent
jobs (a SLURM job array pointing at the same `--out`) cooperate with no process group and no server.

A claim of `base` is the file `base.<generation>.claim` holding host, pid, rank, job, start time and a random
token; the holder is the highest generation. While held, a heartbeat thread refreshes the file's mtime every
stale/4 seconds. A claim whose mtime is older than the stale timeout (`VQT_CLAIM_STALE` seconds, default 300;
judged on the file system's own clock, so hosts with skewed clocks agree), or whose holder is a dead process on
this host, may be taken over by creating the next generation — again exclusively, so only one worker takes it.
A holder that was frozen past the timeout finds a higher generation (`Claim.check`) and drops its unit unwritten.
Releasing removes the holder's file and the stale generations below it.

What a claim protects must be checked again after acquiring it (another worker may have finished it between the
look and the claim): `Sweep` re-reads the unit's committed result first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from vqt.errors import VQTError

log = logging.getLogger("vqt.distributed")

STALE_ENV = "VQT_CLAIM_STALE"  # seconds after which an unrefreshed claim may be taken over
DEFAULT_STALE = 300.0
SUFFIX = ".claim"


class ClaimLost(VQTError):
    """Our claim was taken over (we were frozen past the stale timeout): the unit is someone else's now."""


def stale_timeout(value: float | None = None) -> float:
    """The stale timeout in seconds: `value`, else `$VQT_CLAIM_STALE`, else 300."""
    if value is None:
        text = os.environ.get(STALE_ENV)
        try:
            value = float(text) if text else DEFAULT_STALE
        except ValueError:
            raise VQTError(f"{STALE_ENV}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise VQTError(f"the claim stale timeout must be > 0 seconds, got {value:g} (set {STALE_ENV})")
    return float(value)


def worker_rank() -> int:
    """This worker's rank: the process group's when initialised, else torchrun's `RANK`, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def check_exclusive_create(folder: Path) -> None:
    """Refuse (one line) a folder where creating the same name twice does not fail: claims would not be atomic."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".exclusive-probe-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    os.close(os.open(probe, flags, 0o644))
    try:
        try:
            os.close(os.open(probe, flags, 0o644))
        except FileExistsError:
            return
        raise VQTError(f"{folder} does not support atomic exclusive file creation (creating {probe.name} twice "
                       "succeeded), so workers cannot claim units safely there; use another --out")
    finally:
        probe.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """A held claim; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, owner: Claims, base: Path, generation: int, path: Path) -> None:
        self.owner, self.base, self.generation, self.path = owner, base, generation, path

    def check(self) -> None:
        """Raise `ClaimLost` when another worker took this claim over."""
        if not self.path.exists() or any(g > self.generation for g in _generations(self.base)):
            raise ClaimLost(f"the claim {self.path.name} was taken over by another worker (this one was silent "
                            f"for longer than the {self.owner.stale:g} s stale timeout, {STALE_ENV})")

    def release(self) -> None:
        self.owner._drop(self)
        for generation, path in _generations(self.base).items():
            if generation <= self.generation:
                path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _generations(base: Path) -> dict[int, Path]:
    pattern = re.compile(re.escape(base.name) + r"\.(\d+)" + re.escape(SUFFIX) + "$")
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(base.parent):
            match = pattern.match(entry.name)
            if match:
                found[int(match.group(1))] = Path(entry.path)
    return found


class Claims:
    """This worker's claims: taking them, judging others' (live or stale), and the heartbeat that keeps ours live."""

    def __init__(self, stale: float | None = None, *, rank: int | None = None) -> None:
        self.stale = stale_timeout(stale)
        self.identity = {"host": socket.gethostname(), "pid": os.getpid(),
                         "rank": worker_rank() if rank is None else rank,
                         "job": os.environ.get("SLURM_JOB_ID"), "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                         "token": secrets.token_hex(8)}
        self.held: dict[Path, Claim] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ heartbeat

    def __enter__(self) -> Claims:
        self.thread = threading.Thread(target=self._beat, name="vqt-claim-heartbeat", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        for claim in list(self.held.values()):
            claim.release()

    def _beat(self) -> None:
        while not self.stop.wait(self.stale / 4):
            self.refresh()

    def refresh(self) -> None:
        """Touch every held claim (the heartbeat; also callable between epochs)."""
        with self.lock:
            paths = list(self.held)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    def _drop(self, claim: Claim) -> None:
        with self.lock:
            self.held.pop(claim.path, None)

    # ------------------------------------------------------------------ claiming

    def live(self, path: Path) -> dict[str, Any] | None:
        """The holder of claim file `path` when it is live; None when it is stale (or gone)."""
        try:
            info = json.loads(path.read_text() or "{}")
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except ValueError:
            info = {}  # being written right now (created, not yet filled): judged by its age alone
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                return None
        if info.get("host") == self.identity["host"] and isinstance(info.get("pid"), int):
            same = info["pid"] == self.identity["pid"] and info.get("token") == self.identity["token"]
            if not same and not _pid_alive(info["pid"]):
                return None  # a killed worker of this host: no need to wait for the timeout
        if self.fs_now(path.parent) - mtime > self.stale:
            return None
        return info or {"holder": "unknown"}

    def fs_now(self, folder: Path) -> float:
        """The file system's clock (the mtime of a file touched now), which claim mtimes are compared with."""
        clock = folder / f".clock-{self.identity['host']}-{self.identity['pid']}-{secrets.token_hex(4)}"
        with open(clock, "a"):
            pass
        try:
            return clock.stat().st_mtime
        finally:
            clock.unlink(missing_ok=True)

    def claim(self, base: Path) -> Claim | None:
        """Claim `base` (a path without suffix); None when a live worker holds it or won the race for it."""
        base.parent.mkdir(parents=True, exist_ok=True)
        generations = _generations(base)
        if generations:
            top = max(generations)
            if self.live(generations[top]) is not None:
                return None
            log.info("taking over the stale claim %s", generations[top].name)
            generation = top + 1
        else:
            generation = 0
        path = base.parent / f"{base.name}.{generation}{SUFFIX}"
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(handle, "w") as stream:
            json.dump({**self.identity, "time": time.time(), "generation": generation}, stream)
        claim = Claim(self, base, generation, path)
        with self.lock:
            self.held[path] = claim
        return claim

    def wait(self, base: Path, poll: float | None = None) -> Claim:
        """Claim `base`, waiting while another worker holds it."""
        poll = poll if poll is not None else poll_interval(self.stale)
        while True:
            claim = self.claim(base)
            if claim is not None:
                return claim
            time.sleep(poll)


def poll_interval(stale: float) -> float:
    """How often a waiting worker looks again: often enough for tests, rarely enough for a shared file system."""
    return min(2.0, max(0.05, stale / 20))
