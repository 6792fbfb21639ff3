"""`vqt predict`: top-k class names and scores of an adapter for images or folders of images.

`vqt predict ADAPTER IMAGES...` runs one adapter. `vqt predict -a ADAPTER -a ADAPTER ... IMAGES...` runs several
VQT / linear / Head2Toe adapters of one backbone from one backbone pass per batch (`vqt.load_adapters`): every
task's top-k per image. `-a NAME=PATH` names a task (default: the folder's name); `--task` picks a subset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqt.cli.options import PRECISION_HELP
from vqt.errors import VQTError
from vqt.protocol.validation import PRECISION_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="top-k class names for images", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="[ADAPTER] IMAGES",
                        help="the adapter folder (unless -a is given), then image files and/or folders (searched "
                             "recursively)")
    parser.add_argument("-a", "--adapter", action="append", default=[], metavar="[NAME=]ADAPTER",
                        help="an adapter sharing one backbone pass with the others; repeat for several tasks")
    parser.add_argument("--task", action="append", default=None, metavar="NAME",
                        help="only these tasks of the -a adapters (repeatable; default: all)")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _print_table(title: str, rows: list[tuple[str, str, list[dict]]], with_task: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("image")
    if with_task:
        table.add_column("task")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("score", justify="right")
    previous = None
    for path, task, predictions in rows:
        if previous is not None and path != previous:
            table.add_section()
        for rank, p in enumerate(predictions, start=1):
            first = rank == 1
            cells = [path if first and path != previous else ""] + ([task if first else ""] if with_task else [])
            table.add_row(*cells, str(rank), p["class"], f"{p['score']:.4f}")
            previous = path
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def run(args: argparse.Namespace) -> int:
    from vqt.rundir import user_errors

    if not args.adapter:
        if args.task:
            raise VQTError("--task chooses among -a adapters; give them with -a")
        if len(args.paths) < 2:
            raise VQTError("give an adapter and at least one image (or -a ADAPTER ... IMAGES)")
        return _run_one(args, Path(args.paths[0]), [Path(p) for p in args.paths[1:]])
    from vqt.inference.multitask import predict_tasks

    results = user_errors(predict_tasks)(args.adapter, args.paths, tasks=args.task, top_k_classes=args.top_k,
                                         batch_size=args.batch_size, precision=args.precision)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [(item["path"], task, predictions) for item in results for task, predictions in item["tasks"].items()]
    _print_table(f"predictions of {len(results[0]['tasks']) if results else 0} tasks", rows, with_task=True)
    return 0


def _run_one(args: argparse.Namespace, adapter: Path, images: list[Path]) -> int:
    from vqt.inference.predict import predict
    from vqt.rundir import user_errors

    results = user_errors(predict)(adapter, images, top_k=args.top_k, batch_size=args.batch_size,
                                   precision=args.precision)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    _print_table(f"predictions of {adapter}", [(item["path"], "", item["predictions"]) for item in results],
                 with_task=False)
    return 0
