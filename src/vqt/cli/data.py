"""`vqt data ...`: data-set utilities; `vqt data synth` writes the built-in structured tasks to disk."""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from vqt.data.synth import SYNTH_TASKS, generate_task, resolve_synth_tasks
from vqt.data.synth.writer import DEFAULT_TEST

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data",
                                   help="data-set utilities (synthetic structured tasks, splits of your own folder)")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    parser.set_defaults(func=lambda args: _help(parser))

    synth = commands.add_parser(
        "synth",
        help="generate built-in structured tasks in the VTAB-1k list format",
        description="Generate a built-in task deterministically into OUT/<task>/ (PNG images, train800.txt, "
        "val200.txt, train800val200.txt, test.txt, classes.txt, metadata.jsonl). Tasks: "
        + "; ".join(f"{name}: {task.description}" for name, task in SYNTH_TASKS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("task", help=f"task name(s), comma separated, or 'all' ({', '.join(SYNTH_TASKS)})")
    synth.add_argument("--out", required=True, help="root folder; each task goes to OUT/<task>/")
    synth.add_argument("--train", type=int, default=800, help="training images (listed in train800.txt)")
    synth.add_argument("--val", type=int, default=200, help="validation images (listed in val200.txt)")
    synth.add_argument("--test", type=int, default=DEFAULT_TEST, help="test images (listed in test.txt)")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace a task folder made by another request"
    )
    synth.set_defaults(func=run_synth)

    split = commands.add_parser(
        "split",
        help="write train800/val200/train800val200/test lists for your own ImageFolder",
        description="Make a folder of class sub-folders a VTAB-1k-style task: stratified, seeded lists "
        "(train800.txt, val200.txt, train800val200.txt = both, test.txt = the rest) and classes.txt, written into "
        "FOLDER. Then: vqt train --data-root <parent of FOLDER> --task <FOLDER's name>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    split.add_argument("folder", help="an ImageFolder: one sub-folder of images per class")
    split.add_argument("--train", type=int, default=800, help="training images (train800.txt)")
    split.add_argument("--val", type=int, default=200, help="validation images (val200.txt)")
    split.add_argument("--test", type=int, default=None, help="test images (test.txt; unset: all the rest)")
    split.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical lists")
    split.add_argument("--overwrite", action="store_true", help="replace list files already in FOLDER")
    split.set_defaults(func=run_split)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def run_synth(args: argparse.Namespace) -> int:
    tasks = resolve_synth_tasks(args.task)
    per_task = args.train + args.val + args.test
    with tqdm(total=per_task * len(tasks), unit="img", desc="synth") as bar:
        for task in tasks:
            bar.set_postfix_str(task)
            folder = generate_task(
                task,
                args.out,
                n_train=args.train,
                n_val=args.val,
                n_test=args.test,
                size=args.size,
                seed=args.seed,
                overwrite=args.overwrite,
                progress=bar.update,
            )
            log.info("%s: %s", task, folder)
    return 0


def run_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vqt.data.splitting import split_image_folder
    from vqt.rundir import user_errors

    counts = user_errors(split_image_folder)(args.folder, train=args.train, val=args.val, test=args.test,
                                             seed=args.seed, overwrite=args.overwrite)
    folder = Path(args.folder).resolve()
    print(", ".join(f"{name}.txt: {count}" for name, count in counts.items()) + f" (in {folder})")
    print(f"next: vqt train --data-root {folder.parent} --task {folder.name}")
    return 0
