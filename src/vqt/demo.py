"""`vqt demo`: the whole library on a real pre-trained backbone, offline, on a small machine.

It generates the built-in structured tasks, extracts their feature stores once with the offline DINOv2-S/14,
runs the VTAB-1k protocol (grid on train800 judged on val200, chosen configuration on train800val200 with seeds,
test at the last epoch) for linear probing, Head2Toe and VQT from the same stores, measures each method's
training-step memory in a fresh process, and writes a Markdown table and an accuracy-vs-memory plot.

The default budget is reduced so a 2-core CPU finishes in about a quarter of an hour (`REDUCED`); `--full`
runs the protocol's full budget (`FULL`), which needs a GPU to be practical.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from vqt.backbone.sources import create_backbone, describe
from vqt.bench.methods import measure_all, scatter_plot
from vqt.data.synth import generate_task
from vqt.data.transforms import build_transform
from vqt.precision import resolve_precision
from vqt.protocol.stores import task_store
from vqt.protocol.sweep import SWEEP_DEFAULTS, run_sweep
from vqt.rundir import SUMMARY_FILE, RunDir, read_json, write_json, write_text

log = logging.getLogger("vqt.demo")

METHODS = ("linear", "head2toe", "vqt")
# Measured for memory only (they train from images, hours on a CPU): what VQT's memory is compared with.
MEMORY_ONLY = ("vqt-concat", "vpt-deep", "finetune")


@dataclass(frozen=True)
class Budget:
    """What one demo run spends: data sizes, input size, grid, schedule, seeds."""

    tasks: tuple[str, ...]
    img_size: int
    n_train: int
    n_val: int
    n_test: int
    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    epochs: int
    warmup_epochs: int
    seeds: int
    queries: int | None  # None: the registry's per-task Q
    memory_batch: int
    extra: dict[str, Any] = field(default_factory=dict)


# Reduced: three structured tasks at 112 px, a 2 x 1 grid, 30 epochs, one seed, Q=1 on every task.
REDUCED = Budget(
    tasks=("dsprites_ori", "dsprites_loc", "clevr_count"),
    img_size=112,
    n_train=800,
    n_val=200,
    n_test=500,
    lrs=(0.1, 0.05),
    wds=(1e-4,),
    epochs=30,
    warmup_epochs=5,
    seeds=1,
    queries=1,
    memory_batch=32,
)
# Full: the protocol's budget (docs/design.md §2) on the four built-in tasks at 224 px.
FULL = Budget(
    tasks=("dsprites_ori", "dsprites_loc", "clevr_count", "clevr_dist"),
    img_size=224,
    n_train=800,
    n_val=200,
    n_test=2000,
    lrs=(1.0, 0.5, 0.25, 0.1, 0.05),
    wds=(0.01, 1e-3, 1e-4, 0.0),
    epochs=100,
    warmup_epochs=10,
    seeds=5,
    queries=None,
    memory_batch=32,
)


def sweep_config(budget: Budget, method: str, *, backbone: str, data_root: Path, store_dir: Path, out: Path,
                 device: str, progress: bool, precision: str = "fp32", store_device: str = "auto"
                 ) -> dict[str, Any]:
    return {
        **SWEEP_DEFAULTS,
        "backbone": backbone,
        "data_root": str(data_root),
        "tasks": ",".join(budget.tasks),
        "method": method,
        "queries": budget.queries,
        "img_size": budget.img_size,
        "lrs": list(budget.lrs),
        "wds": list(budget.wds),
        "seeds": budget.seeds,
        "epochs": budget.epochs,
        "warmup_epochs": budget.warmup_epochs,
        "eval_every": budget.epochs,
        "out": str(out),
        "store_dir": str(store_dir),
        "test_store": True,
        "device": device,
        "precision": precision,
        "store_device": store_device,
        "progress": progress,
    }


def measure_memory(methods: tuple[str, ...], backbone: str, budget: Budget, device: str, precision: str = "fp32"
                   ) -> dict[str, dict]:
    """Each method's training step (forward, backward, step) in a fresh process: peak memory, saved bytes."""
    rows = measure_all(list(methods), backbone, budget.memory_batch, budget.img_size, steps=1, device=device,
                       progress=False, precision=precision)
    return {row["method"]: row for row in rows}


def run_demo(out: str | Path = "vqt-demo", *, full: bool = False, backbone: str = "offline:dinov2_s14",
             device: str = "auto", progress: bool = True, precision: str = "auto", store_device: str = "auto"
             ) -> dict[str, Any]:
    """Run the demo into `out` (resumable: finished sweeps and stores are reused) and return its summary.

    `precision` (auto, fp32, bf16) is resolved once for the device and used for extraction, training and the
    memory measurement; `store_device` (auto, cpu, cuda) is where the sweeps hold their training stores."""
    from vqt.protocol.validation import validate_config

    budget = FULL if full else REDUCED
    out = Path(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    validate_config({"device": device, "precision": precision, "store_device": store_device})
    precision = resolve_precision(precision, device)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    data_root = out / "data"
    for task in budget.tasks:
        log.info("generating %s (%d/%d/%d images at %d px)", task, budget.n_train, budget.n_val, budget.n_test,
                 budget.img_size)
        generate_task(task, data_root, n_train=budget.n_train, n_val=budget.n_val, n_test=budget.n_test,
                      size=budget.img_size, seed=0)
    timings["generate data"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model = create_backbone(backbone, img_size=budget.img_size).to(device)
    transform, description = build_transform("backbone", model, img_size=describe(model)["img_size"])
    store_dir = out / "stores"
    for task in budget.tasks:
        for split in ("train800", "val200", "train800val200", "test"):
            log.info("feature store %s/%s", task, split)
            task_store(model, backbone_spec=backbone, data_root=data_root, task=task, split=split,
                       transform=transform, transform_description=description, store_dir=store_dir,
                       progress=progress, precision=precision,
                       overwrite_hint=f"delete {store_dir} or use another --out to extract it again")
    timings["extract features"] = time.perf_counter() - clock
    del model

    results: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        run = RunDir(out / "runs" / method)
        finished = run.is_finished() and read_json(run.path / SUMMARY_FILE).get("precision", "fp32") == precision
        if finished:  # a finished sweep of an earlier demo run: reuse it (delete the folder to redo it)
            log.info("protocol for %s: reusing the finished run in %s", method, run.path)
            summary = read_json(run.path / SUMMARY_FILE)
        else:
            log.info("protocol for %s", method)
            summary = run_sweep(sweep_config(budget, method, backbone=backbone, data_root=data_root,
                                             store_dir=store_dir, out=run.path, device=device, progress=progress,
                                             precision=precision, store_device=store_device))
        results[method] = {"summary": summary, "seconds": summary.get("seconds") or 0.0}
    timings["protocol (all methods)"] = sum(r["seconds"] for r in results.values())

    clock = time.perf_counter()
    memory = measure_memory(METHODS + MEMORY_ONLY, backbone, budget, device, precision)
    timings["memory measurements"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started

    table = render_table(budget, backbone, device, results, memory, timings)
    write_text(out / "results.md", table)
    plot_path = out / "accuracy_vs_memory.png"
    accuracies = {m: mean_accuracy(r["summary"]) for m, r in results.items() if mean_accuracy(r["summary"]) is not None}
    scatter_plot(list(memory.values()), accuracies, plot_path,
                 f"vqt demo: {backbone} at {budget.img_size}px, mean test accuracy (%) over {len(budget.tasks)} tasks")
    summary = {"budget": asdict(budget), "backbone": backbone, "device": device, "precision": precision,
               "timings": timings,
               "methods": {m: {"test_accuracy": mean_accuracy(r["summary"]), "per_task": per_task(r["summary"]),
                               "seconds": r["seconds"], "memory": memory.get(m)} for m, r in results.items()}}
    write_json(out / "summary.json", summary)
    print(table)
    print(f"\nwritten: {out / 'results.md'}, {plot_path}, {out / 'summary.json'}")
    return summary


def per_task(summary: dict[str, Any]) -> dict[str, float | None]:
    """Test accuracy (%) per task, as the sweep's table has it."""
    return {row["task"]: row.get("test_mean") for row in summary["rows"]}


def mean_accuracy(summary: dict[str, Any]) -> float | None:
    values = [v for v in per_task(summary).values() if v is not None]
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_table(budget: Budget, backbone: str, device: str, results: dict[str, dict], memory: dict[str, dict],
                 timings: dict[str, float]) -> str:
    tasks = list(budget.tasks)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"# vqt demo — {backbone}, {budget.img_size} px, {date.today()}",
        "",
        f"Machine: {where} ({platform.machine()}); torch {torch.__version__}.",
        f"Budget: {', '.join(tasks)}; {budget.n_train}/{budget.n_val} train/val, {budget.n_test} test images; "
        f"lr grid {list(budget.lrs)} (x batch/256) x wd {list(budget.wds)}; {budget.epochs} epochs "
        f"({budget.warmup_epochs} warm-up); {budget.seeds} seed(s); "
        f"Q={budget.queries if budget.queries is not None else 'registry'}.",
        "",
        "| method | " + " | ".join(tasks) + " | mean | trainable params | train time s | peak MiB | "
        "step MiB | saved MiB/sample |",
        "|---|" + "---:|" * (len(tasks) + 6),
    ]
    for method, result in results.items():
        accuracies = per_task(result["summary"])
        row = memory.get(method, {})
        lines.append(
            f"| {method} | " + " | ".join(_percent(accuracies.get(t)) for t in tasks)
            + f" | {_percent(mean_accuracy(result['summary']))} | {row.get('trainable_params', 0):,} | "
            f"{result['seconds']:.0f} | {row.get('peak_mib', float('nan')):.0f} | "
            f"{row.get('step_increase_mib', float('nan')):.0f} | {row.get('saved_mib_per_sample', float('nan')):.2f} |"
        )
    for method in MEMORY_ONLY:
        row = memory.get(method, {})
        if "peak_mib" not in row:
            continue
        lines.append(
            f"| {method} (memory only) | " + " | ".join("–" for _ in tasks)
            + f" | – | {row['trainable_params']:,} | – | "
            f"{row['peak_mib']:.0f} | {row['step_increase_mib']:.0f} | {row['saved_mib_per_sample']:.2f} |"
        )
    lines += [
        "",
        "vqt-concat is the official-style VQT (queries concatenated to the sequence, full autograd); it and the "
        "other memory-only rows train from images and are not run through the protocol here.",
        "",
        "Accuracy: test accuracy (%) at the last epoch of the configuration chosen on val200, mean over seeds. "
        "Train time: the method's whole protocol (grid + seeds + test) from the shared feature stores. "
        f"Memory: one training step from images at batch {budget.memory_batch} in a fresh process "
        "(peak: whole process; step: peak minus the memory before the step; saved: what autograd keeps for "
        "backward per image).",
        "",
        "Time spent: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()) + ".",
    ]
    return "\n".join(lines) + "\n"
