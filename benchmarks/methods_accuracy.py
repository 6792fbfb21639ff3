"""Reduced-budget accuracy of store-trained and feature-adapting methods on a real backbone and synthetic tasks.

The offline pre-trained DINOv2-S/14 at a small input size, the built-in synthetic structured tasks
(`vqt.data.synth`), the same images, epochs, batch size and schedule for every method. Store-trainable methods
(linear, head2toe, vqt) tap the backbone once and train on the stored X_l / pre-logits; the feature-adapting ones
(adaptformer, vqt+adaptformer, ...) train online from the images. One seed, no hyper-parameter search: a sanity
comparison on CPU, not a VTAB result.

    python benchmarks/methods_accuracy.py --out benchmarks/results/methods_accuracy.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqt.backbone.sources import create_backbone
from vqt.backbone.tap import BackboneTap, TapOutput
from vqt.data.synth.tasks import get_synth_task
from vqt.methods.head2toe import Head2Toe
from vqt.methods.registry import create_method, get_method, trainable_parameter_count

HEAD_NAMES = ("head.", "queries.", "vqt.head.", "vqt.queries.")


def make_split(task_name: str, count: int, seed: int, img_size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rendered images (normalised like the backbone's pre-training) and their labels."""
    task = get_synth_task(task_name)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        params = task.sample(rng)
        array = np.asarray(task.render(params, img_size).convert("RGB"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(array).permute(2, 0, 1))
        labels.append(task.label(params))
    batch = torch.stack(images)
    batch = (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return batch, torch.tensor(labels)


@torch.no_grad()
def tap_all(tap: BackboneTap, images: torch.Tensor, batch: int) -> TapOutput:
    """The store for a split, in memory: X_l per block and pre-logits of every image."""
    outs = [tap(images[i : i + batch]) for i in range(0, len(images), batch)]
    tokens = [torch.cat([o.tokens[layer] for o in outs]) for layer in range(len(outs[0].tokens))]
    return TapOutput(tokens=tokens, pre_logits=torch.cat([o.pre_logits for o in outs]))


def subset(tapped: TapOutput, index: torch.Tensor) -> TapOutput:
    return TapOutput(tokens=[t[index] for t in tapped.tokens], pre_logits=tapped.pre_logits[index])


def optimizer_for(model: torch.nn.Module, lr_head: float, lr_adapter: float) -> torch.optim.Optimizer:
    head, adapter = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith(HEAD_NAMES) else adapter).append(parameter)
    groups = [{"params": head, "lr": lr_head}] + ([{"params": adapter, "lr": lr_adapter}] if adapter else [])
    return torch.optim.AdamW(groups, weight_decay=0.0)


def run_method(method: str, args: argparse.Namespace, data: dict, num_classes: int) -> dict:
    torch.manual_seed(args.seed)
    spec = get_method(method)
    model = create_method(method, create_backbone(args.backbone, img_size=args.img_size), num_classes)
    train_x, train_y, test_x, test_y = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    start = time.perf_counter()
    if method == "head2toe":  # fixed features: group-lasso selection + fresh head (its own recipe)
        model = Head2Toe(model.backbone, num_classes, keep_fraction=args.keep_fraction)
        features = model.features_from(data["train_tap"])
        model.fit(features, train_y, epochs=args.epochs, lr=args.lr_head, seed=args.seed)
        with torch.no_grad():
            logits = model.head(model.features_from(data["test_tap"]))
        return result(method, model, logits, test_y, start, spec.store_trainable)
    optimizer = optimizer_for(model, args.lr_head, args.lr_adapter)
    steps_per_epoch = math.ceil(len(train_y) / args.batch)
    total = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        model.train()
        for index in torch.randperm(len(train_y), generator=generator).split(args.batch):
            if spec.store_trainable:
                logits = model.head(model.features_from(subset(data["train_tap"], index)))
            else:
                logits = model(train_x[index])
            loss = F.cross_entropy(logits, train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        if spec.store_trainable:
            logits = model.head(model.features_from(data["test_tap"]))
        else:
            logits = torch.cat([model(test_x[i : i + args.batch]) for i in range(0, len(test_y), args.batch)])
    return result(method, model, logits, test_y, start, spec.store_trainable)


def result(method: str, model: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor, start: float,
           store: bool) -> dict:
    return {
        "method": method,
        "accuracy": float((logits.argmax(-1) == labels).float().mean()),
        "trainable_params": trainable_parameter_count(model),
        "train_s": time.perf_counter() - start,
        "store_trainable": store,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="offline:dinov2_s14")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--tasks", nargs="+", default=["dsprites_loc", "clevr_count"])
    parser.add_argument("--methods", nargs="+", default=["linear", "head2toe", "vqt", "adaptformer", "vqt+adaptformer"])
    parser.add_argument("--train", type=int, default=256, help="training images per task")
    parser.add_argument("--test", type=int, default=256, help="test images per task")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr-head", type=float, default=1e-2, help="head, queries (Adam)")
    parser.add_argument("--lr-adapter", type=float, default=1e-3, help="backbone-side adapter parameters")
    parser.add_argument("--keep-fraction", type=float, default=0.7, help="Head2Toe's kept features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="rows as [{task, method, accuracy, ...}]")
    args = parser.parse_args()
    for method in args.methods:
        get_method(method)

    backbone = create_backbone(args.backbone, img_size=args.img_size)
    config = backbone.pretrained_cfg or {}
    mean, std = config.get("mean", (0.485, 0.456, 0.406)), config.get("std", (0.229, 0.224, 0.225))
    tap = BackboneTap(backbone)
    rows = []
    for task in args.tasks:
        num_classes = get_synth_task(task).num_classes
        train_x, train_y = make_split(task, args.train, args.seed, args.img_size, mean, std)
        test_x, test_y = make_split(task, args.test, args.seed + 10_000, args.img_size, mean, std)
        data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
                "train_tap": tap_all(tap, train_x, 64), "test_tap": tap_all(tap, test_x, 64)}
        for method in args.methods:
            row = {"task": task, **run_method(method, args, data, num_classes)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    command = "python benchmarks/methods_accuracy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{command}`",
        "",
        f"Backbone `{args.backbone}` at {args.img_size}px; {args.train} train / {args.test} test images per task "
        f"(`vqt.data.synth`, seed {args.seed}); {args.epochs} epochs, batch {args.batch}, AdamW, cosine, lr "
        f"{args.lr_head} (head, queries) / {args.lr_adapter} (adapters), no search, one seed; Head2Toe keeps "
        f"{args.keep_fraction:.0%} of its features after group lasso. {date.today().isoformat()}, "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}. Train time excludes "
        "the one backbone tap that the store-trainable methods share.",
        "",
        "| task | " + " | ".join(args.methods) + " |",
        "|---|" + "---:|" * len(args.methods),
    ]
    for task in args.tasks:
        cells = [f"{100 * r['accuracy']:.1f}" for m in args.methods for r in rows
                 if r["task"] == task and r["method"] == m]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "| method | trainable params (first task) | train s (mean per task) |", "|---|---:|---:|"]
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | {mine[0]['trainable_params']:,} | {np.mean([r['train_s'] for r in mine]):.0f} |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
