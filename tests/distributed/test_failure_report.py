"""A rank whose part fails prints its own error line *before* the other ranks hear of the failure.

Once they hear, rank 0 exits non-zero and torchrun stops every rank where it is; a line the failing rank printed
only on its way out could be lost (it was, once, under load: tests/distributed/test_launch.py). Here one process
plays rank 1 of 2 and the gather that tells rank 0 is replaced by what torchrun may do next: stop the process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import vqt.cli.main as cli
from vqt.distributed import context
from vqt.features import extract

EXTRACT = ["extract", "--backbone", "vit_tiny_patch16_224@random", "--img-size", "32", "--task", "dsprites_ori",
           "--split", "train800", "--device", "cpu", "--batch-size", "4"]


class LaunchStopped(BaseException):
    """What torchrun does to the other ranks once one has exited non-zero: stop them where they are."""


@pytest.fixture()
def rank_1_of_2(monkeypatch, tmp_path: Path) -> Path:
    """A data root whose image 000013.png is corrupt, and this process as rank 1 of a 2-rank launch whose rank 0
    prepared the store (16 images are one chunk: all of them are rank 1's shard)."""
    root = tmp_path / "vtab"
    assert cli.main(["data", "synth", "dsprites_ori", "--out", str(root), "--train", "16", "--val", "8", "--test",
                     "16", "--size", "32"]) == 0
    (root / "dsprites_ori" / "images" / "train" / "000013.png").write_bytes(b"not a png")
    monkeypatch.setattr(cli, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(context, "_current", context.DistContext(rank=1, world_size=2, backend="gloo"))
    monkeypatch.setattr(context, "check_same_arguments", lambda argv: None)
    monkeypatch.setattr(extract, "_prepare_on_rank_0",
                        lambda out, meta, expect, overwrite, sharded: extract._prepare(out, meta, expect, overwrite))
    return root


def test_the_error_line_is_out_before_the_other_ranks_hear(rank_1_of_2: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    heard: list[tuple[object, str]] = []

    def tell_rank_0_then_stopped(value: object, what: str) -> list[object]:
        heard.append((value, capsys.readouterr().err))
        raise LaunchStopped

    monkeypatch.setattr(extract, "all_gather_object", tell_rank_0_then_stopped)
    capsys.readouterr()
    with pytest.raises(LaunchStopped):
        cli.main([*EXTRACT, "--data-root", str(rank_1_of_2), "--out", str(tmp_path / "store"), "--no-progress"])
    (message, printed), = heard
    assert "000013.png" in str(message)
    errors = [line for line in printed.splitlines() if line.startswith("vqt: error:")]
    assert len(errors) == 1 and errors[0].startswith("vqt: error: [rank 1/2] ") and "000013.png" in errors[0], printed


def test_an_error_reported_early_is_not_printed_again(rank_1_of_2: Path, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.setattr(extract, "all_gather_object", lambda value, what: [None, value])
    capsys.readouterr()
    status = cli.main([*EXTRACT, "--data-root", str(rank_1_of_2), "--out", str(tmp_path / "store"), "--no-progress"])
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vqt: error:")]
    assert len(errors) == 1 and errors[0].startswith("vqt: error: [rank 1/2] ") and "000013.png" in errors[0], errors
    assert not (tmp_path / "store" / "COMPLETE").exists()
