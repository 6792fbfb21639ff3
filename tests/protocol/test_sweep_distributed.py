"""The sweep spread over workers: claim files (exclusive create, heartbeat, stale takeover), two worker processes
on one run folder give the 1-process results, and a worker killed mid-run loses only its unit.

Workers here are plain processes sharing `--out` (as a SLURM job array would), no process group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import sweep_args
from vqt.distributed import claims as claims_module
from vqt.distributed.claims import ClaimLost, Claims, check_exclusive_create
from vqt.errors import VQTError

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK = ("--grid-chunk", "1")  # 4 grid units + 2 seed units: something to share


# ---------------------------------------------------------------- claims


def test_a_held_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    first, second = Claims(60.0, rank=0), Claims(60.0, rank=1)
    claim = first.claim(tmp_path / "unit")
    assert claim is not None and claim.path.name == "unit.0.claim"
    assert json.loads(claim.path.read_text())["rank"] == 0
    assert second.claim(tmp_path / "unit") is None  # live: its holder is this (running) process
    claim.release()
    assert list(tmp_path.glob("*.claim")) == []
    again = second.claim(tmp_path / "unit")
    assert again is not None and again.generation == 0


def test_a_stale_claim_is_taken_over_once_and_its_holder_finds_out(tmp_path: Path) -> None:
    holder, taker, late = Claims(60.0), Claims(60.0), Claims(60.0)
    claim = holder.claim(tmp_path / "unit")
    assert claim is not None
    old = time.time() - 61
    os.utime(claim.path, (old, old))  # no heartbeat for longer than the stale timeout
    taken = taker.claim(tmp_path / "unit")
    assert taken is not None and taken.generation == 1
    assert late.claim(tmp_path / "unit") is None  # generation 1 is live: nobody else takes it
    with pytest.raises(ClaimLost):
        claim.check()
    taken.check()
    claim.release()  # the frozen holder's release leaves the new holder's claim alone
    assert taken.path.exists()


def test_a_claim_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    claims = Claims(3600.0)
    path = tmp_path / "unit.0.claim"
    path.write_text(json.dumps({**claims.identity, "pid": pid, "token": "x"}))
    taken = claims.claim(tmp_path / "unit")
    assert taken is not None and taken.generation == 1
    # the same file from another host is judged by its age only: live for an hour
    path.unlink()
    taken.release()
    path.write_text(json.dumps({**claims.identity, "host": "elsewhere", "pid": pid}))
    assert claims.claim(tmp_path / "unit") is None


def test_the_heartbeat_keeps_a_claim_live(tmp_path: Path) -> None:
    with Claims(0.4) as holder:
        claim = holder.claim(tmp_path / "unit")
        assert claim is not None
        old = time.time() - 0.35
        os.utime(claim.path, (old, old))
        time.sleep(0.3)  # the heartbeat (every 0.1 s) has refreshed it
        assert time.time() - claim.path.stat().st_mtime < 0.2
        assert Claims(0.4).claim(tmp_path / "unit") is None


def test_a_folder_without_atomic_exclusive_create_is_refused(tmp_path: Path, monkeypatch) -> None:
    check_exclusive_create(tmp_path)  # a local disk: fine
    assert list(tmp_path.iterdir()) == []
    real_open = os.open
    monkeypatch.setattr(claims_module.os, "open",
                        lambda path, flags, mode=0o777: real_open(path, flags & ~os.O_EXCL, mode))
    with pytest.raises(VQTError, match="does not support atomic exclusive file creation"):
        check_exclusive_create(tmp_path)


def test_a_bad_stale_timeout_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("VQT_CLAIM_STALE", "soon")
    with pytest.raises(VQTError, match="VQT_CLAIM_STALE"):
        Claims()


# ---------------------------------------------------------------- workers sharing a run folder


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory) -> Path:  # noqa: F811
    """The 1-process run, in a worker process like the others.

    Not in this (pytest) process: a module fixture runs before `one_thread`, with the machine's thread count,
    and float sums split over 2 threads differ from 1 thread's in the last digits (CI failed on exactly that).
    """
    out = tmp_path_factory.mktemp("one") / "run"
    one = worker(sweep_args(data_root, out, "dsprites_ori", *CHUNK))
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-2000:]
    return out


def worker(args: list[str], **env: str) -> subprocess.Popen:
    code = "import sys; from vqt.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "--log-level", "INFO", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def units_trained(log: str) -> list[str]:
    return re.findall(r"task dsprites_ori \(\w+\): ((?:grid|seed) chunk \d+)", log)


def same_results(out: Path, reference: Path) -> None:
    for name in ("results.md", "results.csv", "metrics.jsonl", "tasks/dsprites_ori/summary.json"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    ours, theirs = (json.loads((path / "summary.json").read_text()) for path in (out, reference))
    ours.pop("seconds"), theirs.pop("seconds")
    assert ours == theirs


def test_two_workers_on_one_run_folder_equal_one_process(data_root: Path, reference: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = sweep_args(data_root, out, "dsprites_ori", *CHUNK)
    workers = [worker(args), worker(args)]
    logs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in logs]
    trained = [units_trained(err) for _, err in logs]
    everything = sorted(trained[0] + trained[1])
    assert everything == sorted([f"grid chunk {i}" for i in range(4)] + ["seed chunk 0", "seed chunk 1"]), trained
    same_results(out, reference)
    assert list((out / "claims").rglob("*.claim")) == []  # every claim released
    assert list(out.rglob(".clock-*")) == []  # the file-system clock probes are removed


def test_a_killed_worker_loses_only_its_unit_and_a_rerun_finishes(data_root: Path, reference: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = sweep_args(data_root, out, "dsprites_ori", *CHUNK)
    victim = worker(args)
    deadline = time.time() + 240
    results = out / "tasks" / "dsprites_ori"
    while time.time() < deadline:  # kill it while it holds a claim, after at least one committed unit
        if list(results.glob("grid/*/result.json")) and list((out / "claims").rglob("*.claim")):
            os.kill(victim.pid, signal.SIGSTOP)
            if list((out / "claims").rglob("*.claim")):
                break  # still holding one: kill it now
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    committed = len(list(results.glob("*/*/result.json")))
    assert 1 <= committed < 6
    left = list((out / "claims").rglob("*.claim"))
    # the rerun takes the dead worker's claim at once (same host, dead pid), with a stale timeout of an hour
    rerun = worker(args, VQT_CLAIM_STALE="3600")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    assert len(units_trained(err)) == 6 - committed  # nothing committed was redone
    same_results(out, reference)
    assert left, "the worker was killed while holding no claim; the takeover was not exercised"


def test_a_worker_stopped_by_the_stop_counter_leaves_the_rest_to_another(data_root: Path,  # noqa: F811
                                                                        reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = sweep_args(data_root, out, "dsprites_ori", *CHUNK)
    # one after the other: started together, the finisher could take every unit before the quitter claimed one
    # (the quitter then exits 0 with nothing done: seen once in a full test run); concurrent sharing is
    # test_two_workers_on_one_run_folder_equal_one_process's
    quitter = worker(args, VQT_STOP_AFTER_UNITS="1")
    logs = [quitter.communicate(timeout=300)]
    finisher = worker(args)
    logs.append(finisher.communicate(timeout=300))
    assert (quitter.returncode, finisher.returncode) == (130, 0), [err[-2000:] for _, err in logs]
    assert len(units_trained(logs[0][1])) == 1
    assert len(units_trained(logs[1][1])) == 5  # the other worker did the rest, nothing twice
    same_results(out, reference)
