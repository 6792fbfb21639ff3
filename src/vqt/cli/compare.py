"""`vqt compare RUN_DIR...`: several sweep runs in one table, with each method's training memory and time.

Reads each run folder's summary.json (tasks x methods, test mean ± std, Natural / Specialized / Structured means
over the tasks all runs share), counts the trainable parameters in the saved adapters, and measures each method's
saved activations and peak training memory once (`vqt bench memory`'s code, a fresh process per method) on the
runs' backbone and image size; the numbers are cached in RUN_DIR/memory.json (keyed by backbone, batch, image
size, device and method) so the next compare reads them. Writes DIR/compare.md, compare.csv (tasks x methods),
compare_methods.csv (one row per method) and accuracy_vs_memory.png. `--budgets 0.25,0.5,1` adds the
memory-limited comparison (`vqt.report.frontier`): each method's best run under each fraction of the unshrunk
VPT-deep run's memory, with the runs of adapting methods shrunk by `--tuned-layers` (measured with that setting).

Runs with another backbone, image size or transform, or without a task in common, are refused (exit 2, one line
naming the difference); partly overlapping task lists are compared on the common tasks. Two runs of the same
method are told apart by their folder names (`vqt (run-a)`), and refused if those are the same too.

Exit status: 0; 2 when the runs cannot be compared; 1 when a memory measurement failed (the tables are still
written, that method's memory marked failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vqt.cli.options import float_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="several sweep runs in one table: accuracy per task and group, memory, parameters, time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="`vqt sweep` run folders")
    parser.add_argument("--out", type=Path, default=Path("comparison"),
                        help="folder for compare.md/.csv and the plot (default: %(default)s)")
    parser.add_argument("--no-memory", action="store_true",
                        help="measure nothing (numbers already cached in the run folders are still shown)")
    parser.add_argument("--batch", type=int, default=32,
                        help="images per measured training step (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda for the measurement (default: cuda when available)")
    parser.add_argument("--plot-x", choices=("saved", "peak", "increase"), default="saved",
                        help="plot x axis: saved activation MiB/sample, peak memory, or peak minus the loaded model "
                             "(default: %(default)s)")
    parser.add_argument("--budgets", type=float_list, default=None, metavar="F[,F...]",
                        help="the memory-limited comparison: at each budget (a fraction of --budget-of's memory, "
                             "e.g. 0.25,0.5,1) each method's best run that fits; runs of adapting methods shrunk "
                             "with --tuned-layers enter there. Adds a table to compare.md, memory_budgets.csv and "
                             "memory_frontier.png (memory as --plot-x)")
    parser.add_argument("--budget-of", default="vpt-deep",
                        help="the method whose unshrunk run's memory the budgets are fractions of "
                             "(default: %(default)s)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no per-method progress lines")
    parser.set_defaults(func=run)


def resolve_device(name: str | None) -> str:
    import torch

    from vqt.errors import VQTError

    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VQTError("--device cuda asked for, but no CUDA device is available")
    return device


def run(args: argparse.Namespace) -> int:
    from vqt.bench.methods import scatter_plot
    from vqt.errors import VQTError
    from vqt.report import compare, frontier
    from vqt.rundir import write_text

    if args.batch < 1:
        raise VQTError(f"--batch must be at least 1, got {args.batch}")
    runs, tasks, note = compare.load_runs(args.runs)
    if note:
        print(f"note: {note}")
    device = resolve_device(args.device)
    memory = compare.memory_rows(runs, batch=args.batch, device=device, measure=not args.no_memory,
                                 progress=args.progress)
    methods = compare.method_table(runs, tasks, memory)
    first = runs[0]
    caption = (f"batch {args.batch}, {first.img_size}px, {device}; one training step per method in a fresh process "
               f"(`vqt bench memory`), cached in each run's {compare.MEMORY_FILE}")
    text = compare.markdown(runs, tasks, methods, note=note, memory_caption=caption)
    key = compare.PLOT_KEYS[args.plot_x]
    budgets = None
    if args.budgets is not None:
        budgets = frontier.budget_table(methods, key, args.budgets, args.budget_of)
        text += "\n" + frontier.markdown(budgets)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "compare.md", text)
    write_text(args.out / "compare.csv", compare.tasks_csv(runs, tasks))
    write_text(args.out / "compare_methods.csv", compare.methods_csv(methods))
    outputs = [args.out / name for name in ("compare.md", "compare.csv", "compare_methods.csv")]
    if budgets is not None:
        write_text(args.out / "memory_budgets.csv", frontier.budgets_csv(budgets))
        outputs += [args.out / "memory_budgets.csv",
                    frontier.plot(methods, budgets, args.out / "memory_frontier.png",
                                  f"{first.backbone}, {first.img_size}px, batch {args.batch}, {device}; mean accuracy "
                                  f"over {len(tasks)} task(s); budgets x {budgets['reference']}")]
    print(text)
    rows, accuracies = compare.plot_points(methods, key)
    if rows:
        plot = args.out / "accuracy_vs_memory.png"
        scatter_plot(rows, accuracies, plot, f"{first.backbone}, {first.img_size}px, batch {args.batch}, {device}; "
                     f"mean accuracy over {len(tasks)} task(s)", memory_key=key)
        outputs.append(plot)
    else:
        print("no plot: no method has both a memory number and an accuracy"
              + (" (--no-memory and nothing cached)" if args.no_memory else ""))
    print("written: " + ", ".join(str(p) for p in outputs))
    failed = [label for label, row in memory.items() if "error" in row]
    if failed:
        print(f"vqt: memory measurement failed for {', '.join(failed)} (marked in the table)", file=sys.stderr)
        return 1
    return 0
