"""`vqt export ADAPTER... --out FILE`: one graph with the backbone, every adapter's query path and head.

The adapters (VQT, linear, Head2Toe of one backbone; `NAME=PATH` names a task) share one backbone pass. The graph
takes normalised images of the adapters' input size with any batch size and returns one logits output per task;
`FILE.json` beside it records the task and class names, the input transform and the difference measured against
PyTorch (onnxruntime for ONNX). Exit status 0 when written and checked, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from vqt.inference.settings import EXPORT_FORMATS as FORMATS
    from vqt.inference.settings import EXPORT_TOLERANCE as TOLERANCE

    parser = subparsers.add_parser("export", help="export adapters and their backbone as one ONNX / torch.export graph",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", metavar="[NAME=]ADAPTER", help="adapter folders or hf-hub: ids")
    parser.add_argument("--out", type=Path, required=True, help="the file to write (e.g. tasks.onnx)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torch-export (.pt2)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest logit difference against PyTorch accepted (default: {TOLERANCE:g})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.inference.export import export_adapters
    from vqt.rundir import user_errors

    report = user_errors(export_adapters)(args.adapters, args.out, format=args.format, opset=args.opset,
                                          tolerance=args.tolerance)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        tasks = ", ".join(task["name"] for task in report["tasks"])
        print(f"wrote {report['file']} ({report['bytes'] / 2**20:.1f} MiB, {report['format']}): tasks {tasks}; "
              f"max |logit difference| vs PyTorch {report['max_abs_diff']:.1e} on a batch of "
              f"{report['checked_batch']}")
    return 0
