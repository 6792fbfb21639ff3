"""`vqt` under a real `torchrun --nproc_per_node 2` on CPU (gloo): what the user runs and sees.

- a 2-rank `vqt extract` makes the very store a single process makes, and only rank 0 prints its result line;
- a rank that fails (a corrupt image in its shard) ends the whole run quickly, non-zero, with that rank's message;
- ranks launched with different arguments are refused in one line naming both command lines;
- a command with nothing to share (`vqt data synth`) runs on rank 0 alone.

Each launch starts three Python processes that import torch: the slow part of these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqt.cli.main import main

TIMEOUT_S = 300  # VQT_DIST_TIMEOUT of the launches: a test that hangs fails; "quickly" means well under it
EXTRACT = ["extract", "--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--task", "dsprites_ori",
           "--split", "train800", "--device", "cpu", "--batch-size", "4"]


def torchrun(*command: str, cwd: Path) -> tuple[int, str, str, float]:
    """Run `torchrun --standalone --nproc_per_node 2 COMMAND` (torch's launcher module): rc, stdout, stderr, s."""
    env = {**os.environ, "VQT_DIST_TIMEOUT": str(TIMEOUT_S), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=2 * TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.fixture(scope="module")
def synth_launch(tmp_path_factory) -> tuple[Path, tuple[int, str, str, float]]:
    """`vqt data synth` under torchrun: a command with nothing to share, run by rank 0 alone."""
    root = tmp_path_factory.mktemp("vtab")
    launch = torchrun("-m", "vqt", "data", "synth", "dsprites_ori", "--out", str(root), "--train", "16", "--val", "8",
                      "--test", "16", "--size", "32", cwd=root)
    return root, launch


@pytest.fixture(scope="module")
def data_root(synth_launch) -> Path:
    assert synth_launch[1][0] == 0, synth_launch[1][2]
    return synth_launch[0]


def test_a_command_with_nothing_to_share_runs_on_rank_0_alone(synth_launch) -> None:
    root, (rc, out, err, _) = synth_launch
    assert rc == 0, err
    assert "[rank 1/2] INFO vqt.cli: `vqt data` does not use several processes: rank 0 runs it" in err
    # rank 0's log line (it may follow rank 0's progress bar on the same line: the bar ends without a newline)
    assert err.count("INFO vqt.cli.data: dsprites_ori:") == 1, err
    assert err.count("[rank 0/2] INFO vqt.cli.data: dsprites_ori:") == 1, err
    assert len((root / "dsprites_ori" / "train800.txt").read_text().splitlines()) == 16


def test_two_rank_extract_equals_one_process_and_only_rank_0_prints(data_root: Path, tmp_path: Path, capsys) -> None:
    args = [*EXTRACT, "--data-root", str(data_root)]
    assert main([*args, "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    capsys.readouterr()
    rc, out, err, _ = torchrun("-m", "vqt", *args, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert rc == 0, err
    assert out.count("16 images, tokens") == 1  # the result line: rank 0's only
    assert "extract two (rank 0's 0 of 16)" in err and "(rank 1's" not in err  # rank 0's progress bar only
    for name in ("tokens.npy", "pre_logits.npy", "labels.npy", "meta.json", "COMPLETE"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_a_failing_rank_ends_the_run_quickly_with_its_message(data_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "vtab"
    subprocess.run(["cp", "-r", str(data_root), str(broken)], check=True)
    (broken / "dsprites_ori" / "images" / "train" / "000013.png").write_bytes(b"not a png")
    rc, out, err, seconds = torchrun("--no-python", "vqt", *EXTRACT, "--data-root", str(broken), "--out",
                                     str(tmp_path / "store"), cwd=tmp_path)
    assert rc != 0
    # 16 images are one chunk of the default 1024: rank 1's shard; rank 1 names the image and rank 0 repeats it.
    lines = [line[line.index("vqt: error:"):] for line in err.splitlines() if "vqt: error:" in line]
    assert any(line.startswith("vqt: error: [rank 1/2] ") and "000013.png" in line for line in lines), err
    assert all("000013.png" in line for line in lines)  # rank 0, if not stopped first, repeats rank 1's message
    assert seconds < TIMEOUT_S / 2  # no rank sat out the collective deadline
    assert not (tmp_path / "store" / "COMPLETE").exists()


def test_ranks_launched_with_different_arguments_are_refused(tmp_path: Path) -> None:
    script = tmp_path / "launch.sh"
    script.write_text('#!/bin/sh\nif [ "$RANK" = 0 ]; then level=INFO; else level=WARNING; fi\n'
                      f'exec "{sys.executable}" -m vqt --log-level "$level" info "{tmp_path / "absent"}"\n')
    script.chmod(0o755)
    rc, out, err, seconds = torchrun("--no-python", str(script), cwd=tmp_path)
    assert rc != 0
    refusals = [line for line in err.splitlines() if "launched with different arguments" in line]
    assert refusals and all(line.startswith("vqt: error: [rank ") for line in refusals), err
    assert "rank 0 has `--log-level INFO info" in refusals[0] and "rank 1 has `--log-level WARNING info" in refusals[0]
    # Refused before `info` ran (it would name the absent path); the launcher may stop the slower rank first.
    assert [line for line in err.splitlines() if line.startswith("vqt: error:")] == refusals
    assert seconds < TIMEOUT_S / 2
