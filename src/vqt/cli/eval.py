"""`vqt eval`: a saved adapter's accuracy on one split of a task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqt.cli.options import PRECISION_HELP
from vqt.protocol.validation import PRECISION_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="accuracy of an adapter on a split", description=__doc__,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("adapter", type=Path,
                        help="adapter folder (e.g. <run>/adapter or <run>/tasks/T/final/seed0/adapter)")
    parser.add_argument("--data-root", type=Path, required=True, help="VTAB-1k root with <task>/<split>.txt")
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per backbone pass")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.inference.predict import evaluate_adapter
    from vqt.rundir import user_errors

    result = user_errors(evaluate_adapter)(args.adapter, args.data_root, args.task, args.split,
                                           batch_size=args.batch_size, num_workers=args.num_workers,
                                           progress=not args.no_progress, precision=args.precision)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['task']}/{result['split']}: {100 * result['accuracy']:.2f}% of {result['images']} images")
    return 0
