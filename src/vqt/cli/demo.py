"""`vqt demo`: the one-command tour on the offline pre-trained backbone (see `vqt.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the offline demo: synthetic structured tasks, DINOv2-S/14, linear vs Head2Toe vs VQT",
        description=(
            "Generate the built-in structured tasks, extract their features once with the offline DINOv2-S/14 "
            "(pip install 'visual-query-tuning[offline]'), run the VTAB-1k protocol for linear probing, Head2Toe "
            "and VQT with a reduced budget (about 15 minutes on 2 CPU cores), and write a table (results.md) and an "
            "accuracy-vs-memory plot (accuracy_vs_memory.png) into --out. Rerunning reuses finished work."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("vqt-demo"), help="output folder")
    parser.add_argument("--full", action="store_true", help="the full protocol budget (4 tasks at 224 px, "
                        "5x4 grid, 100 epochs, 5 seeds, registry Q): hours on a CPU, meant for a GPU")
    parser.add_argument("--backbone", default="offline:dinov2_s14", help="backbone spelling")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="compute precision of extraction, training and the memory measurement: bf16 runs the "
                        "backbone and query path under torch.autocast; auto: bf16 on a CUDA device that supports "
                        "it, fp32 elsewhere")
    parser.add_argument("--store-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the sweeps hold a training store: cuda (GPU memory), cpu, or auto (cuda when "
                        "the device is CUDA and the store fits)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.demo import run_demo

    run_demo(args.out, full=args.full, backbone=args.backbone, device=args.device, progress=not args.no_progress,
             precision=args.precision, store_device=args.store_device)
    return 0
