"""Inference cost of VQT's one-pass `forward` against a plain `forward` of the same backbone.

Both run under `torch.inference_mode()` on the same images; the two are timed alternately (plain, VQT, plain,
VQT, ...) so machine noise hits both alike, and the ratio of medians is printed. Goal: <= 1.03.

    python benchmarks/inference.py
    python benchmarks/inference.py --models vit_base_patch16_224 --batch 32 --repeats 7 --out results.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from vqt.backbone.sources import create_backbone
from vqt.methods.vqt import VQT


def timed(fn, images: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    lines = [
        f"Device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; {date.today()}; "
        f"batch {args.batch}, Q={args.queries}, median of {args.repeats} alternating runs",
        "",
        "| backbone | plain forward s | VQT forward s | ratio (goal <= 1.03) |",
        "|---|---|---|---|",
    ]
    for arch in args.models:
        torch.manual_seed(0)
        backbone = create_backbone(f"{arch}@random")
        plain = create_backbone(f"{arch}@random")
        plain.load_state_dict(backbone.state_dict())
        plain.reset_classifier(100)
        plain = plain.to(device).eval()
        model = VQT(backbone, num_classes=100, num_queries=args.queries).to(device).eval()
        images = torch.randn(args.batch, 3, 224, 224, device=device)
        with torch.inference_mode():
            timed(plain, images), timed(model, images)  # warm-up
            plain_times, vqt_times = [], []
            for _ in range(args.repeats):
                plain_times.append(timed(plain, images))
                vqt_times.append(timed(model, images))
        p, v = statistics.median(plain_times), statistics.median(vqt_times)
        lines.append(f"| {arch} | {p:.3f} | {v:.3f} | {v / p:.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(f"Command: `python benchmarks/inference.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
