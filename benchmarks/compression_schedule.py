"""Compression at a constant rate vs on the run's schedule, side by side on the same trained adapters.

For every seed of finished `benchmarks/accuracy.py` runs (a method compressed with --compress: Head2Toe or VQT
Q = 1), the compressed head is retrained from the saved adapter twice in one process: once with both compression
heads at a constant rate (as before the fix) and once through `vqt.protocol.compress`, the sweep's own call (the
run's warm-up + cosine, as the official compression trainer does). Both use today's other choices (reference
initialisation, decay on the weight only), so the two columns differ in the schedule alone; the first column is
the compressed accuracy the sweep itself recorded: the code before the fix for runs made before it (commit
678b7db), and for later runs the same numbers as the last column (a check that the benchmark retrains what the
sweep does). Same chosen lr / wd, seed, train800val200 store and test store as the sweep.

    python benchmarks/compression_schedule.py --root /tmp/realroot \
        --run digits=/tmp/fullgrid/runs/head2toe --run digits=/tmp/q10d/runs/vqt-q1 --out /tmp/compression.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from vqt.backbone.sources import create_backbone, describe
from vqt.checkpoint.trained import load_trained
from vqt.data.transforms import build_transform
from vqt.methods.feature_selection import select_and_refit
from vqt.protocol.accuracy import shared_store_features
from vqt.protocol.compression import HEAD_LR_FRACTION, compress
from vqt.protocol.stores import task_store
from vqt.training.recipe import scaled_lr


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the accuracy benchmark's --root (tasks, stores)")
    parser.add_argument("--run", action="append", required=True, help="TASK=RUN_DIR (a method's run folder)")
    parser.add_argument("--out", type=Path, required=True, help="markdown table written here")
    args = parser.parse_args(argv)
    started = time.time()
    backbone_cache: dict = {}
    lines = ["| task | method | chosen lr, wd | recorded by the sweep | constant rate | warm-up + cosine |",
             "|---|---|---|---:|---:|---:|"]
    for item in args.run:
        task, run = item.split("=", 1)
        run = Path(run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        spec, size = config["backbone"], int(config["img_size"])
        if (spec, size) not in backbone_cache:
            backbone = create_backbone(spec, img_size=size)
            transform, description = build_transform("backbone", backbone, img_size=describe(backbone)["img_size"])
            backbone_cache[(spec, size)] = (backbone, transform, description)
        backbone, transform, description = backbone_cache[(spec, size)]

        def store(split: str, backbone=backbone, transform=transform, description=description, spec=spec,
                  config=config, task=task):
            return task_store(backbone, backbone_spec=spec, data_root=args.root, task=task, split=split,
                              transform=transform, transform_description=description, store_dir=args.root / "stores",
                              dtype=config["store_dtype"], progress=False)

        trainval, test = store("train800val200"), store("test")
        summary = json.loads((run / "tasks" / task / "summary.json").read_text())
        epochs, warmup = int(config["epochs"]), int(config["warmup_epochs"])
        lr = scaled_lr(summary["lr"], int(config["batch_size"]))  # the chosen effective lr, as the sweep passes it
        group_lasso, weight_decay = float(config["group_lasso"]), summary["weight_decay"]
        scores: dict[str, list[float]] = {"constant": [], "schedule": []}
        cache: dict = {}
        for record in summary["final"]:
            model, _ = load_trained(run / "tasks" / task / "final" / f"seed{record['seed']}" / "adapter", backbone)
            features, labels = shared_store_features(model, trainval, cache)
            test_features, test_labels = shared_store_features(model, test, cache)
            heads = {  # the sweep's own call, and the same heads at compress()'s rate held constant
                "schedule": compress(model, trainval, keep_fraction=record["keep"], lr=lr, weight_decay=weight_decay,
                                     epochs=epochs, warmup_epochs=warmup, group_lasso=group_lasso,
                                     seed=record["seed"], feature_cache=cache).head,
                "constant": select_and_refit(features, labels, summary["num_classes"], keep_fraction=record["keep"],
                                             group_lasso=group_lasso, epochs=epochs, lr=lr * HEAD_LR_FRACTION,
                                             weight_decay=weight_decay, seed=record["seed"]),
            }
            with torch.no_grad():
                for name, head in heads.items():
                    correct = (head(test_features).argmax(-1) == test_labels).double().mean().item()
                    scores[name].append(100 * correct)
        recorded = [100 * r["compressed_test_accuracy"] for r in summary["final"]]

        def cell(values: list[float]) -> str:
            return f"{np.mean(values):.1f} ± {np.std(values):.1f} ({' / '.join(f'{v:.1f}' for v in values)})"

        lines.append(f"| {task} | {summary['method']} | {summary['lr']:g}, {summary['weight_decay']:g} | "
                     f"{cell(recorded)} | {cell(scores['constant'])} | {cell(scores['schedule'])} |")
        print(lines[-1], flush=True)
    command = "python benchmarks/compression_schedule.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = "\n".join([
        "# Compression heads: constant rate vs the run's warm-up + cosine",
        "",
        f"Command: `{command}`  ",
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {time.time() - started:.0f} s.",
        "",
        "Compressed test accuracy (%), keep 70 %, mean ± std over the run's seeds (each seed in brackets). The last",
        "two columns retrain the compressed heads from the same saved adapters in this one process and differ only in",
        "the schedule; the first is what the sweep recorded: for runs made before the fix (678b7db) the old code",
        "(constant rate, the selection head without weight decay and from PyTorch's default initialisation, the bias",
        "decayed), for later runs the code of the last column, so the two must agree.",
        "",
        *lines,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
