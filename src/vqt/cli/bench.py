"""`vqt bench memory`: every method's training memory, saved activations, step time and size, in one run.

Same backbone, batch and input size for all methods, each in a fresh process (see `vqt.bench.methods`);
prints a Markdown table, optionally writes it (and the raw rows as JSON), and draws the accuracy-vs-memory
scatter plot when a sweep's accuracies are given.

Exit status: 0 when every method was measured; 2, with one line and nothing measured, when the request cannot work
at all (an unknown method or backbone, a checkpoint that does not load, no CUDA); 1 when some or all methods failed
while measuring: the table (and --out/--json) is still written with those rows marked `failed: <reason>`, and one
line on stderr names them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from vqt.errors import VQTError


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vqt bench memory` (shared with benchmarks/methods_memory.py)."""
    from vqt.bench.methods import DEFAULT_METHODS

    parser.add_argument("--backbone", default="vit_base_patch16_224@random", help="backbone spelling")
    parser.add_argument("--batch", type=int, default=32, help="images per training step")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="registry names to measure")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (measured) step")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="compute precision of each step's forward: bf16 runs it under torch.autocast (weights "
                        "and optimiser state stay fp32); auto: bf16 on a CUDA device that supports it, else fp32")
    parser.add_argument("--num-classes", type=int, default=100, help="head size")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table (with the command) here")
    parser.add_argument("--json", type=Path, default=None, help="write the raw rows here")
    parser.add_argument("--accuracies", type=Path, default=None,
                        help="a sweep's accuracies (JSON {method: acc} / [{method, accuracy}] or CSV) for the plot")
    parser.add_argument("--plot", type=Path, default=None,
                        help="accuracy-vs-memory scatter plot path (default: next to --out, .png)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: per-method training memory and time")
    inner = parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    memory = inner.add_parser(
        "memory",
        help="peak training memory, saved activations, step time and trainable parameters of every method",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_memory_arguments(memory)
    memory.set_defaults(func=run_memory)


def run_memory(args: argparse.Namespace, command: str | None = None) -> int:
    import torch

    from vqt.backbone.sources import create_backbone
    from vqt.bench.methods import header, load_accuracies, markdown_table, measure_all, scatter_plot
    from vqt.methods.registry import get_method
    from vqt.precision import resolve_precision

    for name in args.methods:
        get_method(name)  # unknown names fail before any measuring
    if args.accuracies is not None and not args.accuracies.is_file():
        raise VQTError(f"no such accuracies file: {args.accuracies}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VQTError("--device cuda asked for, but no CUDA device is available")
    precision = resolve_precision(getattr(args, "precision", "fp32"), device)
    # Build it once here (CPU, then dropped) so an unknown or unloadable backbone is one error, not every method's.
    create_backbone(args.backbone, img_size=args.img_size)
    rows = measure_all(args.methods, args.backbone, args.batch, args.img_size, args.steps, device, args.num_classes,
                       precision=precision)
    command = command or "vqt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join([header(args.backbone, args.batch, args.img_size, device, args.steps, precision), "",
                      markdown_table(rows, device)])
    print("\n" + text)
    if args.out:
        notes = (
            "Peak memory is the whole process (Python, torch, the backbone's weights, AdamW state); 'step increase' is "
            "the peak minus the memory just before the first step; 'saved MiB/sample' counts the distinct tensors "
            "autograd keeps for backward (parameters excluded; under bf16 the weights' whole bf16 casts, a per-step "
            "constant, are left out of it and reported as weight_casts_mib in --json); 'saved MiB/step' is everything "
            "autograd keeps in one step, weight casts and slices included (VQT's once-made bf16 block copies are "
            "persistent, like the weights, and not counted)."
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Command: `{command}`\n\n{notes}\n\n{text}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"backbone": args.backbone, "batch": args.batch, "img_size": args.img_size,
                                         "device": device, "precision": precision, "rows": rows}, indent=2))
    if args.accuracies is not None:
        plot = args.plot or (args.out.with_suffix(".png") if args.out else Path("accuracy_vs_memory.png"))
        drawn = scatter_plot(rows, load_accuracies(args.accuracies), plot,
                             f"{args.backbone}, batch {args.batch}, {args.img_size}px, {device}")
        print(f"plot: {plot} ({drawn} methods with both numbers)")
    failed = [row["method"] for row in rows if "error" in row]
    if failed:
        print(f"vqt: {len(failed)} of {len(rows)} methods failed: {', '.join(failed)} (reasons in the table)",
              file=sys.stderr)
        return 1
    return 0
