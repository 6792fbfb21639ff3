"""--compress on a user's own task: 'official' is refused (it names VTAB-1k tasks), a keep fraction compresses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, sweep_args, synth
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """dsprites_ori, and `my_shapes`: a user's own task (a copy under a name outside the VTAB-1k registry)."""
    root = tmp_path_factory.mktemp("vtab")
    synth(root, "dsprites_ori")
    shutil.copytree(root / "dsprites_ori", root / "my_shapes")
    return root


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *BACKBONE, "--data-root", str(data_root), "--task", "dsprites_ori", *TINY, "--out", str(out),
            *extra]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_official_compression_on_a_user_task_is_refused(data_root: Path, tmp_path: Path, capsys,
                                                        command: str) -> None:
    """'official' is VTAB-1k's per-task rule: on a folder outside the registry it once did nothing, silently."""
    out = tmp_path / "o"
    args = (["train", *train_args(data_root, out, "--compress", "official")[1:]] if command == "train"
            else sweep_args(data_root, out, "dsprites_ori,my_shapes", "--compress", "official"))
    if command == "train":
        args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compress official" in err and "'my_shapes'" in err, err
    assert not out.exists()  # refused before any work


def test_a_keep_fraction_compresses_a_user_task(data_root: Path, tmp_path: Path, capsys) -> None:
    args = train_args(data_root, tmp_path / "o", "--compress", "0.5")
    args[args.index("--task") + 1] = "my_shapes"
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["keep"] == 0.5 and 0 <= summary["compressed_eval_accuracy"] <= 1
    assert (tmp_path / "o" / "adapter-compressed").is_dir()
