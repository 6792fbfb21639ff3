"""Many tasks from one backbone pass: images/s of N adapters served by `vqt.load_adapters`, side by side.

Per backbone (random weights, random images at 224 px), measured alternately in one run (plain, shared 1, shared 4,
shared 10, ..., separate 10, plain, ...) so machine noise hits all alike; medians over `--repeats` rounds:
- shared N / plain: the time of one `MultiTaskModel` pass serving N VQT (Q = 1) adapters ÷ one plain timm
  `forward` of the backbone (goal for N = 10: <= 1.15);
- separate N / plain: the N adapters' own `model(images)` one after another (what serving them without the shared
  pass costs, ≈ N);
- shared N / separate N: the saving.
Before timing, every task's logits from the shared pass are checked against its adapter's own forward (max
difference printed). The adapters are saved to a temporary folder and loaded with `vqt.load_adapters`, as a user
would. `--device cuda` times on a GPU (synchronised).

    python benchmarks/multitask.py --out benchmarks/results/multitask_cpu.md
    python benchmarks/multitask.py --models vit_small_patch16_224 --batch 8 --repeats 3      # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vqt.backbone.sources import create_backbone
from vqt.checkpoint.adapter import save_adapter
from vqt.inference.multitask import MultiTaskModel, load_adapters
from vqt.methods.vqt import VQT


def make_adapters(root: Path, spec: str, count: int, num_queries: int, classes: int = 10) -> list[Path]:
    """`count` VQT adapters of `spec` with random queries and heads, saved under `root`."""
    backbone = create_backbone(spec)
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        model = VQT(backbone, num_classes=classes, num_queries=num_queries)
        with torch.no_grad():
            model.head.weight.normal_()
        paths.append(save_adapter(model, root / f"task{index:02d}", backbone_spec=spec))
    return paths


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(spec: str, counts: list[int], num_queries: int, batch: int, repeats: int,
            device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(Path(tmp), spec, max(counts), num_queries)
        shared = {n: load_adapters(paths[:n]).to(device) for n in counts}
        separate = [model.to(device) for model in shared[max(counts)].tasks.values()]
    plain = shared[max(counts)].backbone
    images = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        biggest: MultiTaskModel = shared[max(counts)]
        together = biggest(images)
        max_diff = max(float((a - model(images)).abs().max()) for a, model in zip(together, separate, strict=True))
        runs: dict[str, Callable[[], object]] = {"plain": lambda: plain(images)}
        for n in counts:
            runs[f"shared {n}"] = (lambda model: lambda: model(images))(shared[n])
        runs[f"separate {max(counts)}"] = lambda: [model(images) for model in separate]
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"medians": medians, "max_diff": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 4, 10])
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="prepend the table to this markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    biggest = max(args.counts)
    header = ("| backbone | plain images/s | " + " | ".join(f"shared {n} / plain" for n in args.counts)
              + f" | separate {biggest} / plain | shared {biggest} / separate {biggest} | max logit diff |")
    lines = [header, "|---" * (5 + len(args.counts)) + "|"]
    for spec_name in args.models:
        result = measure(f"{spec_name}@random", args.counts, args.queries, args.batch, args.repeats, device)
        m = result["medians"]
        ratios = " | ".join(f"{m[f'shared {n}'] / m['plain']:.3f}" for n in args.counts)
        lines.append(f"| {spec_name} | {args.batch / m['plain']:.1f} | {ratios} | "
                     f"{m[f'separate {biggest}'] / m['plain']:.2f} | "
                     f"{m[f'shared {biggest}'] / m[f'separate {biggest}']:.3f} | {result['max_diff']:.1e} |")
        print(lines[-1], flush=True)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    command = "python " + " ".join(sys.argv)
    section = "\n".join([
        f"## {datetime.date.today().isoformat()}: {where}, torch {torch.__version__}, fp32, batch {args.batch}, "
        f"Q = {args.queries}, median of {args.repeats}",
        "",
        f"Command: `{command}`",
        "",
        *lines,
        "",
    ])
    print(section)
    if args.out:
        title = "# Many tasks from one backbone pass (`benchmarks/multitask.py`)\n\n"
        previous = args.out.read_text().removeprefix(title) if args.out.is_file() else ""
        args.out.write_text(title + section + "\n" + previous)


if __name__ == "__main__":
    main()
