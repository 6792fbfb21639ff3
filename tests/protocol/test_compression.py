"""--compress on a user's own task: 'official' is refused (it names VTAB-1k tasks), a keep fraction compresses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(shapes_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(shapes_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_official_compression_on_a_user_task_is_refused(shapes_root: Path, tmp_path: Path, capsys,
                                                        command: str) -> None:
    """'official' is VTAB-1k's per-task rule: on a folder outside the registry it once did nothing, silently."""
    out = tmp_path / "o"
    args = (["train", *train_args(shapes_root, out, "--compress", "official")[1:]] if command == "train"
            else sweep_args(shapes_root, out, "dsprites_ori,my_shapes", "--compress", "official"))
    if command == "train":
        args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compress official" in err and "'my_shapes'" in err, err
    assert not out.exists()  # refused before any work


def test_a_keep_fraction_compresses_a_user_task(shapes_root: Path, tmp_path: Path, capsys) -> None:
    args = train_args(shapes_root, tmp_path / "o", "--compress", "0.5")
    args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["keep"] == 0.5 and 0 <= summary["compressed_eval_accuracy"] <= 1
    assert (tmp_path / "o" / "adapter-compressed").is_dir()
