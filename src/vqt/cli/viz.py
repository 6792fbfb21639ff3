"""`vqt viz ...`: pictures of a trained adapter; `vqt viz attention` draws what its queries look at."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("viz", help="pictures of an adapter (query attention maps)")
    commands = parser.add_subparsers(dest="viz_command", metavar="VIZ_COMMAND")
    parser.set_defaults(func=lambda args: _help(parser))

    attention = commands.add_parser(
        "attention",
        help="per-layer query attention over the patch grid, one PNG per image",
        description="For each image, a PNG (OUT/<image name>.attention.png) with one column per layer and one row "
        "per query (per query and head with --heads): the query's attention over the patch grid, overlaid on the "
        "image as the model saw it (after the adapter's recorded transform). The bar under each map splits the "
        "query's attention between the patches and each prefix token (CLS, registers). Colour: 0 is no "
        "attention; the top is the panel's own largest patch weight (--scale panel, printed over the panel) or the "
        "largest in the figure (--scale image). Exit status: 0 when every picture was written, 2 on a user error "
        "(missing or unreadable image, not an adapter folder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    attention.add_argument("adapter", type=Path, help="adapter folder (a VQT adapter, e.g. RUN/adapter)")
    attention.add_argument("images", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    attention.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created if missing)")
    attention.add_argument("--heads", action="store_true", help="one row per attention head instead of their mean")
    attention.add_argument("--queries", type=_index_list, default=None,
                           help="comma-separated query indices to show (unset: all)")
    attention.add_argument("--scale", choices=("panel", "image"), default="panel",
                           help="colour scale top: each panel's own max, or one max for the whole figure")
    attention.add_argument("--columns", type=int, default=None,
                           help="wrap the layers into lines of this many panels (unset: all layers on one line)")
    attention.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    attention.set_defaults(func=run_attention)


def _index_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one query index")
    return values


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def run_attention(args: argparse.Namespace) -> int:
    from vqt.rundir import user_errors
    from vqt.viz.figure import render_attention

    written = user_errors(render_attention)(
        args.adapter, args.images, args.out, split_heads=args.heads, queries=args.queries, scale=args.scale,
        columns=args.columns, batch_size=max(1, args.batch_size),
    )
    for path in written:
        print(path)
    return 0
