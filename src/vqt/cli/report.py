"""`vqt report RUN_DIR`: an HTML report (results table, grid heatmaps, training curves, kept feature groups)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an HTML report of a sweep run folder",
        description="Write RUN_DIR/report.html and the figures it shows (RUN_DIR/report/*.png; keep them together): "
        "the results table, per task the val-accuracy heatmap over the lr x wd grid, the loss and val-accuracy "
        "curves of the grid configurations and the final seeds, and for compressed runs the fraction of each "
        "layer's features the group lasso kept. An unfinished sweep is reported with what it has finished, and "
        "the page says so. Exit status: 0 when written, 2 when RUN_DIR is no sweep run folder or has finished "
        "nothing yet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="the --out folder of `vqt sweep`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.report.html import write_run_report
    from vqt.report.load import load_run
    from vqt.rundir import user_errors

    report = user_errors(load_run)(args.run_dir)
    page = user_errors(write_run_report)(report)
    unfinished = report.unfinished()
    if unfinished:
        print(f"vqt: note: {unfinished}", file=sys.stderr)
    print(f"report: {page}")
    return 0
