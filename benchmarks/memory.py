"""Training-step memory of VQT vs the official-style VQT, a VPT-deep-like method and full fine-tuning.

For each backbone and batch size, every method runs one training step (forward, backward, optimizer step) in a
fresh process, so its peak memory is its own. Printed side by side from one run:
- saved MiB/step and MiB/sample: every byte autograd keeps for backward (distinct storages, parameters excluded;
  autocast's per-step weight casts and their slices included; VQT's bf16 block copies, made once, reported apart);
- peak training memory: CUDA peak allocation on a GPU, process peak RSS on the CPU (MiB, whole process);
- step time (s), one step after one warm-up step.

    python benchmarks/memory.py                       # ViT-S/16 and ViT-B/16, batch 8 and 32, random weights
    python benchmarks/memory.py --models vit_small_patch16_224 --batches 8 --out results.md
    python benchmarks/memory.py --precision fp32 bf16 --batches 8    # fp32 and bf16 autocast side by side
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from vqt.bench.memory import SavedActivations, current_rss_bytes, peak_rss_bytes, reset_peak_rss, run_isolated
from vqt.precision import autocast, to_master

METHODS = ("vqt", "vqt-official-style", "vpt-deep-10", "full-finetune")
MiB = 2**20


def build(method: str, arch: str, num_classes: int) -> torch.nn.Module:
    from vqt.backbone.sources import create_backbone
    from vqt.methods.vpt import VPT
    from vqt.methods.vqt import VQT
    from vqt.methods.vqt_concat import ConcatVQT

    backbone = create_backbone(f"{arch}@random")
    if method == "vqt":
        return VQT(backbone, num_classes)
    if method == "vqt-official-style":
        return ConcatVQT(backbone, num_classes)
    if method == "vpt-deep-10":
        return VPT(backbone, num_classes, num_prompts=10, mode="deep")
    if method == "full-finetune":
        backbone.reset_classifier(num_classes)
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        return backbone.train()
    raise ValueError(method)


def one_case(method: str, arch: str, batch: int, device: str, precision: str = "fp32") -> dict:
    """Runs in its own process: build, one warm-up step, one measured step (forward under `precision`)."""
    torch.manual_seed(0)
    num_classes = 100
    model = build(method, arch, num_classes).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> SavedActivations:
        optimizer.zero_grad(set_to_none=True)
        with SavedActivations([model]) as saved:
            with autocast(precision, device):
                logits = model(images)
            loss = torch.nn.functional.cross_entropy(to_master(logits), labels)
        loss.backward()
        optimizer.step()
        return saved

    step()  # warm-up: one-time work (VQT's bf16 block copies) is not the measured step's

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        measured = step()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        before = 0
    else:
        reset_peak_rss()  # the peak of this step, not of loading the backbone
        before = current_rss_bytes()
        start = time.perf_counter()
        measured = step()
        elapsed_first = time.perf_counter() - start
        peak = peak_rss_bytes()
        start = time.perf_counter()
        step()
        elapsed = min(elapsed_first, time.perf_counter() - start)
    return {
        "method": method,
        "arch": arch,
        "batch": batch,
        "precision": precision,
        "saved_mib_per_step": measured.bytes / MiB,
        "saved_mib_per_sample": measured.bytes / MiB / batch,
        "persistent_mib": measured.persistent_bytes / MiB,
        "peak_mib": peak / MiB,
        "step_increase_mib": (peak - before) / MiB,
        "step_s": elapsed,
        "trainable": sum(p.numel() for p in trainable),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                        help="compute precisions to measure, side by side (bf16: the forward under autocast)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    methods = ["vqt", *[m for m in args.methods if m != "vqt"]]  # VQT first: the ratios' reference

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    peak_name = "CUDA peak alloc" if args.device == "cuda" else "peak RSS"
    lines = [
        f"Device: {where}, {torch.get_num_threads()} threads; torch {torch.__version__}; {date.today()}",
        "",
        f"| backbone | batch | precision | method | saved MiB/step | saved MiB/sample | ratio to VQT "
        f"| once-made copies MiB | {peak_name} MiB | step increase MiB | step s | trainable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for arch in args.models:
        for batch in args.batches:
            vqt_by_precision = {}
            for precision in args.precision:
                rows = [run_isolated(one_case, method, arch, batch, args.device, precision) for method in methods]
                ours = rows[0]["saved_mib_per_step"]
                vqt_by_precision[precision] = ours
                for row in rows:
                    lines.append(
                        f"| {arch} | {batch} | {precision} | {row['method']} | {row['saved_mib_per_step']:.1f} | "
                        f"{row['saved_mib_per_sample']:.2f} | {row['saved_mib_per_step'] / ours:.1f}x | "
                        f"{row['persistent_mib']:.1f} | {row['peak_mib']:.0f} | {row['step_increase_mib']:.0f} | "
                        f"{row['step_s']:.2f} | {row['trainable']:,} |"
                    )
                    print(lines[-1], flush=True)
                by_method = {row["method"]: row["saved_mib_per_step"] for row in rows}
                parts = [f"VQT/{m} = {ours / by_method[m]:.3f}" for m in methods[1:]
                         if m in ("vpt-deep-10", "vqt-official-style")]
                ratios.append(f"{arch} batch {batch} {precision}: " + ", ".join(parts) + " (goal <= 0.10 each)")
            if {"fp32", "bf16"} <= set(vqt_by_precision):
                ratios.append(f"{arch} batch {batch}: VQT bf16 / VQT fp32 = "
                              f"{vqt_by_precision['bf16'] / vqt_by_precision['fp32']:.3f} (goal <= 0.6)")
    lines += ["", "Saved bytes per step, weights included (this VQT ÷ other), measured in this run:", ""]
    lines += [f"- {r}" for r in ratios]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        command = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
        notes = (
            "Peak RSS is the process peak during the step (Python, torch and the weights included; the peak is reset "
            "after the model is built and one warm-up step); 'step increase' is the peak "
            "minus the RSS just before the measured step. Every method runs its forward under the same autocast "
            "(bf16) and the loss in fp32. 'once-made copies' are VQT's bf16 block copies (persistent, like the "
            "weights; not in the saved bytes). Step times are from a shared 2-core machine."
        )
        args.out.write_text(f"Command: `{command}`\n\n{notes}\n\n{text}\n")


if __name__ == "__main__":
    main()
