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


def test_compression_trains_on_the_recipes_schedule(monkeypatch) -> None:
    """Both compression heads follow the run's warm-up + cosine (the official compression trainer reuses the run's
    solver config); at a constant rate the last iterate was noisy enough to cost one seed 55 points."""
    import torch

    from vqt.protocol import compression
    from vqt.training.recipe import lr_factor

    seen: dict = {}

    def spy(features, labels, num_classes, **kwargs):
        seen.update(kwargs)
        return torch.nn.Linear(features.shape[1], num_classes)

    monkeypatch.setattr(compression, "select_and_refit", spy)
    monkeypatch.setattr(compression, "shared_store_features",
                        lambda model, store, cache: (torch.randn(8, 6), torch.zeros(8, dtype=torch.long)))
    model = torch.nn.Module()
    model.head = torch.nn.Linear(6, 3)
    compression.compress(model, None, keep_fraction=0.5, lr=0.2, weight_decay=1e-4, epochs=20, warmup_epochs=4, seed=1)
    assert seen["lr"] == pytest.approx(0.1) and seen["weight_decay"] == 1e-4 and seen["epochs"] == 20
    assert [seen["lr_factor"](e) for e in range(20)] == [lr_factor(e, 20, 4) for e in range(20)]
    assert seen["lr_factor"](0) == 0.0 and seen["lr_factor"](19) < 0.01

