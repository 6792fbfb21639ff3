"""`--tensorboard DIR`: the per-epoch records of metrics.jsonl as TensorBoard scalars, one run per configuration.

Written when a unit of work commits, from the very records its metrics.jsonl gets (nothing hooks the training
loops): `vqt sweep` writes DIR/<task>/grid/lr<lr>_wd<wd> and DIR/<task>/final/seed<s>, `vqt train`
DIR/<task>/train/lr<lr>_wd<wd>_seed<s>. Scalars, by epoch: `train/loss`, `train/lr` (the lr of that epoch),
`val/accuracy` (the epochs it was measured); then, at the last epoch, `test/accuracy` and
`test/compressed_accuracy` (sweep) or `<split>/accuracy` (train). Non-finite values (a failed configuration) are
left out, as metrics.jsonl records them as null.

A unit written again (a resumed sweep retrains an interrupted chunk) replaces its event files, so a run never holds
two copies of a step; units committed before `--tensorboard` was given are written from their metrics.jsonl when a
resumed sweep passes them. `--tensorboard` changes no result: a run resumes with or without it, and it is not
part of the configuration a run folder records.

TensorBoard is an optional extra (`pip install 'visual-query-tuning[tensorboard]'`); without it `--tensorboard` is
refused at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vqt.errors import VQTError

INSTALL = "pip install 'visual-query-tuning[tensorboard]'"
EPOCH_SCALARS = (("train_loss", "train/loss"), ("lr_value", "train/lr"), ("val_accuracy", "val/accuracy"))


def require() -> Any:
    """`torch.utils.tensorboard.SummaryWriter`, or one clear line saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise VQTError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL} "
                       f"(or pip install tensorboard)") from error
    return SummaryWriter


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scalars(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """(tag, value, step) of every scalar the records hold; evaluation results are placed at the last epoch."""
    last = max((int(r["epoch"]) for r in records if "epoch" in r), default=0)
    found: list[tuple[str, float, int]] = []
    for record in records:
        if "epoch" in record:
            pairs = [(tag, record.get(key)) for key, tag in EPOCH_SCALARS]
            step = int(record["epoch"])
        elif record.get("kind") == "test":
            pairs = [("test/accuracy", record.get("test_accuracy")),
                     ("test/compressed_accuracy", record.get("compressed_test_accuracy"))]
            step = last
        elif record.get("kind") == "eval":
            split = record.get("split") or "eval"
            pairs = [(f"{split}/accuracy", record.get("accuracy")),
                     (f"{split}/compressed_accuracy", record.get("compressed_accuracy"))]
            step = last
        else:
            continue
        found.extend((tag, float(value), step) for tag, value in pairs if _finite(value))
    return found


def log_unit(root: str | Path | None, name: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write one configuration's records as the TensorBoard run `root/name`, replacing what it held (no-op: no root)."""
    if not root:
        return
    summary_writer = require()
    folder = Path(root) / name
    if folder.is_dir():
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
    writer = summary_writer(log_dir=str(folder))
    try:
        for tag, value, step in scalars(records):
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()


def log_committed(root: str | Path | None, name: str | Path, metrics: Path) -> None:
    """A unit committed earlier: write its metrics.jsonl as `root/name` unless that run already has events."""
    if not root or any((Path(root) / name).glob("events.out.tfevents.*")) or not Path(metrics).is_file():
        return
    from vqt.rundir import read_jsonl

    log_unit(root, name, read_jsonl(Path(metrics)))
