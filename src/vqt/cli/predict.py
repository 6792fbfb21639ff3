"""`vqt predict`: top-k class names and scores of an adapter for images or folders of images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqt.protocol.config import PRECISION_CHOICES, PRECISION_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="top-k class names for images", description=__doc__,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("adapter", type=Path, help="adapter folder")
    parser.add_argument("images", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.protocol.predict import predict
    from vqt.protocol.rundir import user_errors

    results = user_errors(predict)(args.adapter, args.images, top_k=args.top_k, batch_size=args.batch_size,
                                     precision=args.precision)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"predictions of {args.adapter}")
    table.add_column("image")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("score", justify="right")
    for item in results:
        for rank, p in enumerate(item["predictions"], start=1):
            table.add_row(item["path"] if rank == 1 else "", str(rank), p["class"], f"{p['score']:.4f}")
        table.add_section()
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)
    return 0
