"""`vqt info PATH`: what an adapter or a feature store contains."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vqt.errors import VQTError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show what an adapter or a feature store contains",
        description="Show the configuration of an adapter folder or the metadata of a feature store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="an adapter folder, a feature-store folder or a run folder")
    parser.add_argument("--json", action="store_true", help="print raw JSON instead of a table")
    parser.set_defaults(func=run)


def describe_path(path: Path) -> tuple[str, dict]:
    from vqt.checkpoint.config import read_adapter_config
    from vqt.checkpoint.files import ADAPTER_CONFIG

    if (path / ADAPTER_CONFIG).is_file():
        return "adapter", read_adapter_config(path)
    from vqt.checkpoint.config import read_config
    from vqt.checkpoint.files import TRAINED_CONFIG
    from vqt.rundir import SUMMARY_FILE, read_json

    if (path / TRAINED_CONFIG).is_file():
        return "adapter", read_config(path)
    if (path / SUMMARY_FILE).is_file():
        return "run", read_json(path / SUMMARY_FILE)
    from vqt.features.store import read_meta

    return "feature store", read_meta(path)


def run(args: argparse.Namespace) -> int:
    if not args.path.exists():
        raise VQTError(f"no such file or folder: {args.path}")
    kind, info = describe_path(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    table = Table(title=f"{kind}: {args.path}", show_header=False)
    for key, value in info.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, shown if len(shown) < 200 else shown[:197] + "...")
    Console().print(table)
    return 0
