"""`vqt report RUN_DIR`: an HTML page of a `vqt sweep` run folder.

Writes `RUN_DIR/report.html` and the PNGs it shows under `RUN_DIR/report/` (keep them together): the results
table (as results.md), per task the val-accuracy heatmap over the lr × wd grid, the grid configurations' loss and
val-accuracy curves, the final seeds' loss curves with their test accuracies, and for compressed runs the fraction
of each feature group (pre-logits, layer 0..L-1) the group lasso kept. An unfinished run is reported with what
its committed units hold, and the page says so; a folder that is no sweep run raises `VQTError`.
"""

from __future__ import annotations

from pathlib import Path

from vqt.report.load import RunReport, load_run

REPORT_FILE = "report.html"
FIGURE_DIR = "report"

def write_report(run_dir: str | Path) -> Path:
    """Write the report of a sweep run folder; returns the path of report.html."""
    return write_run_report(load_run(run_dir))


def write_run_report(run: RunReport) -> Path:
    """Write the report of a run folder already read by `load_run`; returns the path of report.html."""
    from vqt.checkpoint.files import library_version
    from vqt.io import write_atomic
    from vqt.report import figures as fig  # matplotlib: loaded only when a page is drawn
    from vqt.report.page import _slug, render

    root = run.path
    figure_dir = root / FIGURE_DIR
    written: dict[str, dict[str, str]] = {}
    paths: set[Path] = set()
    for task in run.tasks:
        if not task.started:
            continue
        slug = _slug(task.name)
        drawn: dict[str, Path] = {}
        if task.grid:
            drawn["heatmap"] = fig.heatmap(task, run.lrs, run.wds, figure_dir / f"{slug}-heatmap.png")
            drawn["grid"] = fig.grid_curves(task, run.lrs, run.wds, figure_dir / f"{slug}-grid.png")
        if task.finals:
            drawn["final"] = fig.final_curves(task, figure_dir / f"{slug}-final.png")
        if task.kept:
            drawn["kept"] = fig.kept_bars(task, figure_dir / f"{slug}-kept.png")
        paths.update(drawn.values())
        written[task.name] = {kind: f"{FIGURE_DIR}/{path.name}" for kind, path in drawn.items()}
    for stale in figure_dir.glob("*.png") if figure_dir.is_dir() else ():
        if stale not in paths:  # a figure of an earlier report that this one does not show
            stale.unlink()
    page = root / REPORT_FILE
    write_atomic(page, render(run, written, library_version()).encode())
    return page
