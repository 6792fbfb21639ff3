"""Every method's training-step cost on one backbone, batch and input size: the accuracy-vs-memory comparison.

Each method runs in a fresh spawned process (`vqt.bench.memory.run_isolated`) so its peak memory is its own:
build the backbone and method, one training step (forward, backward, AdamW step) that also counts the bytes
autograd saves for backward, then `steps` timed steps. Peak memory is the CUDA allocator's peak on a GPU and the
process' peak RSS on the CPU (whole process: Python, torch, weights), plus the increase over the RSS measured just
before the first step (what training adds). `vqt bench memory` and `benchmarks/methods_memory.py` call this.
With precision 'bf16' each step's forward runs under `vqt.precision.autocast` (weights and AdamW state stay fp32).
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

from vqt.bench.memory import SavedActivations, current_rss_bytes, peak_rss_bytes, reset_peak_rss, run_isolated
from vqt.precision import autocast, to_master

MiB = 2**20
DEFAULT_METHODS: tuple[str, ...] = (
    "linear",
    "head2toe",
    "vqt",
    "vqt-concat",
    "bitfit",
    "vpt-shallow",
    "vpt-deep",
    "lora",
    "adaptformer",
    "finetune",
    "vqt+vpt-deep",
    "vqt+lora",
    "vqt+adaptformer",
)


def measure_method(
    method: str,
    backbone: str,
    batch: int,
    img_size: int,
    steps: int,
    device: str,
    num_classes: int = 100,
    method_kwargs: Mapping[str, Any] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """One method's numbers; meant to run in its own process (see `measure_all`). `precision`: 'fp32' or 'bf16'."""
    from vqt.backbone.sources import create_backbone
    from vqt.methods.registry import create_method, get_method

    torch.manual_seed(0)
    model = create_method(method, create_backbone(backbone, img_size=img_size), num_classes, **(method_kwargs or {}))
    model = model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> tuple[int, int]:
        optimizer.zero_grad(set_to_none=True)
        with SavedActivations([model]) as saved, autocast(precision, device):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(to_master(logits), labels)
        loss.backward()
        optimizer.step()
        return saved.bytes - saved.cast_bytes, saved.cast_bytes

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()  # the peak of this step, not of loading the backbone
        before = current_rss_bytes()
    start = time.perf_counter()
    saved, casts = step()
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {
        "method": method,
        "precision": precision,
        "store_trainable": get_method(method).store_trainable,
        "trainable_params": sum(p.numel() for p in trainable),
        "saved_mib_per_sample": saved / MiB / batch,
        "weight_casts_mib": casts / MiB,  # bf16: the weights' bf16 copies autograd keeps, once per step
        "saved_mib_per_step": (saved + casts) / MiB,  # everything autograd keeps in one step, casts and slices too
        "peak_mib": peak / MiB,
        "step_increase_mib": (peak - before) / MiB,
        "step_s": statistics.median(times) if times else first,
        "timed_steps": len(times),  # 0: the time is the first (measured) step's, allocation warm-up included
    }


def measure_all(
    methods: Sequence[str],
    backbone: str,
    batch: int,
    img_size: int,
    steps: int = 2,
    device: str = "cpu",
    num_classes: int = 100,
    progress: bool = True,
    precision: str = "fp32",
    method_kwargs: Sequence[Mapping[str, Any] | None] | None = None,
) -> list[dict[str, Any]]:
    """`measure_method` for each method, each in a fresh process; a failing method is reported, not fatal.

    `method_kwargs`: the builder options of each method, in the same order (e.g. a shrunk `tuned_layers`)."""
    rows = []
    options = list(method_kwargs) if method_kwargs is not None else [None] * len(methods)
    if len(options) != len(methods):
        raise ValueError(f"{len(methods)} methods but {len(options)} method_kwargs")
    for method, kwargs in zip(methods, options, strict=True):
        try:
            row = run_isolated(measure_method, method, backbone, batch, img_size, steps, device, num_classes, kwargs,
                               precision)
        except RuntimeError as error:
            row = {"method": method, "error": str(error)}
        if kwargs:
            row["method_kwargs"] = dict(kwargs)
        rows.append(row)
        if progress:
            print(json.dumps(row), flush=True)
    return rows


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA peak allocation)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads (process peak RSS)"


def markdown_table(rows: Sequence[Mapping[str, Any]], device: str) -> str:
    """The comparison table; memory in MiB, time in seconds per training step."""
    peak = "CUDA peak MiB" if device.startswith("cuda") else "peak RSS MiB"
    lines = [
        f"| method | trainable params | store-trainable | {peak} | step increase MiB | saved MiB/sample "
        "| saved MiB/step | s/step |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {row['method']} | {row['trainable_params']:,} | {'yes' if row['store_trainable'] else 'no'} | "
            f"{row['peak_mib']:,.0f} | {row['step_increase_mib']:,.0f} | {row['saved_mib_per_sample']:.2f} | "
            f"{row.get('saved_mib_per_step', float('nan')):.1f} | {row['step_s']:.2f} |"
        )
    return "\n".join(lines)


def header(backbone: str, batch: int, img_size: int, device: str, steps: int, precision: str = "fp32") -> str:
    timing = (
        f"median of {steps} timed step(s) after one measured step"
        if steps
        else "the single measured step (first step of a fresh process: includes allocation warm-up, so an upper bound)"
    )
    return (
        f"Backbone `{backbone}`, batch {batch}, {img_size}x{img_size} px, {precision}; "
        f"device: {device_description(device)}; "
        f"torch {torch.__version__}; {date.today().isoformat()}; step time = {timing}."
    )


def load_accuracies(path: Path) -> dict[str, float]:
    """Method -> accuracy from a sweep: JSON `{method: acc}` or `[{"method", "accuracy"}]`, or CSV with those columns.

    Several rows of one method (seeds, tasks) are averaged.
    """
    values: dict[str, list[float]] = {}
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as stream:
            records: list[Mapping[str, Any]] = list(csv.DictReader(stream))
    else:
        data = json.loads(path.read_text())
        records = [{"method": k, "accuracy": v} for k, v in data.items()] if isinstance(data, dict) else data
    for record in records:
        values.setdefault(str(record["method"]), []).append(float(record["accuracy"]))
    return {method: statistics.fmean(accs) for method, accs in values.items()}


def scatter_plot(
    rows: Sequence[Mapping[str, Any]],
    accuracies: Mapping[str, float],
    path: Path,
    title: str,
    memory_key: str = "step_increase_mib",
) -> int:
    """Accuracy (y) against training memory (x) for the methods measured and swept; returns points drawn.

    x defaults to the step increase (peak minus memory with the model loaded): the part a method's training adds,
    which the whole-process peak RSS on a CPU buries under the interpreter and weights; `memory_key="peak_mib"`
    plots the peak itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r[memory_key], accuracies[r["method"]], r["method"]) for r in rows if r["method"] in accuracies
              and "error" not in r]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for memory, accuracy, method in points:
        marker = "*" if method.startswith("vqt") else "o"
        axes.scatter(memory, accuracy, marker=marker, s=80 if marker == "*" else 40)
        axes.annotate(method, (memory, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    label = {"step_increase_mib": "training memory over the loaded model (MiB)", "peak_mib": "peak memory (MiB)",
             "saved_mib_per_sample": "saved activations (MiB/sample)"}
    axes.set_xlabel(label.get(memory_key, memory_key))
    axes.set_ylabel("accuracy")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return len(points)
