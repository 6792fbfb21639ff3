"""The 19 VTAB-1k tasks: class counts, groups and the number of queries the official VQT scripts used.

Facts from the VQT paper and its released scripts (andytu28/VQT): tasks run with Q=1 were followed by
Head2Toe-style compression keeping 70% of the features; Q=10 and Q=20 tasks were not compressed.
Test-split sizes are VTAB-1k's (the VPT paper's dataset table; the same counts as the community image lists).
`folder` is the directory name in the community-distributed VTAB-1k image-list archive (CIFAR-100 is ``cifar``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vqt.errors import DataError

GROUPS = ("Natural", "Specialized", "Structured")
SPLITS = ("train800", "val200", "train800val200", "test")
COMPRESSION_KEEP = 0.7  # fraction of features kept by compression on the Q=1 tasks


@dataclass(frozen=True)
class TaskInfo:
    """One VTAB-1k task as the official protocol runs it."""

    name: str
    num_classes: int
    group: str
    queries: int  # Q per layer in the official VQT scripts
    test_images: int  # size of the VTAB-1k test split (the full test set of the source dataset)
    folder: str  # directory name under the VTAB-1k root

    @property
    def compress(self) -> bool:
        """The official scripts compress (keep `COMPRESSION_KEEP` of the features) exactly the Q=1 tasks."""
        return self.queries == 1


def _task(
    name: str, num_classes: int, group: str, queries: int, test_images: int, folder: str | None = None
) -> TaskInfo:
    return TaskInfo(name, num_classes, group, queries, test_images, folder or name)


TASKS: dict[str, TaskInfo] = {
    task.name: task
    for task in (
        _task("caltech101", 102, "Natural", 1, 6_084),
        _task("cifar100", 100, "Natural", 1, 10_000, folder="cifar"),
        _task("dtd", 47, "Natural", 1, 1_880),
        _task("oxford_flowers102", 102, "Natural", 1, 6_149),
        _task("oxford_iiit_pet", 37, "Natural", 1, 3_669),
        _task("svhn", 10, "Natural", 20, 26_032),
        _task("sun397", 397, "Natural", 1, 21_750),
        _task("patch_camelyon", 2, "Specialized", 1, 32_768),
        _task("eurosat", 10, "Specialized", 1, 5_400),
        _task("resisc45", 45, "Specialized", 1, 6_300),
        _task("diabetic_retinopathy", 5, "Specialized", 1, 42_670),
        _task("clevr_count", 8, "Structured", 1, 15_000),
        _task("clevr_dist", 6, "Structured", 10, 15_000),
        _task("dmlab", 6, "Structured", 20, 22_735),
        _task("kitti", 4, "Structured", 20, 711),
        _task("dsprites_loc", 16, "Structured", 20, 73_728),
        _task("dsprites_ori", 16, "Structured", 1, 73_728),
        _task("smallnorb_azi", 18, "Structured", 20, 12_150),
        _task("smallnorb_ele", 9, "Structured", 10, 12_150),
    )
}

# Other spellings people use (paper tables, other codebases) -> canonical name.
ALIASES: dict[str, str] = {
    "cifar": "cifar100",
    "cifar_100": "cifar100",
    "caltech": "caltech101",
    "flowers": "oxford_flowers102",
    "flowers102": "oxford_flowers102",
    "pets": "oxford_iiit_pet",
    "pet": "oxford_iiit_pet",
    "camelyon": "patch_camelyon",
    "pcam": "patch_camelyon",
    "retinopathy": "diabetic_retinopathy",
    "clevr_counting": "clevr_count",
    "clevr_distance": "clevr_dist",
    "dsprites_location": "dsprites_loc",
    "dsprites_orientation": "dsprites_ori",
    "smallnorb_azimuth": "smallnorb_azi",
    "smallnorb_elevation": "smallnorb_ele",
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_task(name: str) -> TaskInfo:
    """Look a task up by canonical name, folder name or alias (case and '-'/'_' insensitive)."""
    key = _normalise(name)
    key = ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    raise DataError(f"unknown VTAB-1k task {name!r}{_suggestion(key)}")


def find_task(name: str) -> TaskInfo | None:
    """Like `get_task`, but None for names that are not VTAB-1k tasks (e.g. a user's own folder)."""
    try:
        return get_task(name)
    except DataError:
        return None


def tasks_in_group(group: str) -> list[str]:
    """Task names of one group, in the paper's order."""
    wanted = _normalise(group)
    for known in GROUPS:
        if known.lower() == wanted:
            return [task.name for task in TASKS.values() if task.group == known]
    raise DataError(f"unknown VTAB-1k group {group!r}; choose from {', '.join(GROUPS)}")


def resolve_tasks(spec: str) -> list[str]:
    """Expand 'all', a group name ('natural', ...) or a comma list of these and task names; order kept, no repeats."""
    names: list[str] = []
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise DataError("no task given; use 'all', a group (Natural, Specialized, Structured) or task names")
    for part in parts:
        key = _normalise(part)
        if key == "all":
            expanded = list(TASKS)
        elif key in {group.lower() for group in GROUPS}:
            expanded = tasks_in_group(key)
        else:
            expanded = [get_task(part).name]
        names.extend(name for name in expanded if name not in names)
    return names


def _suggestion(key: str) -> str:
    candidates = [*TASKS, *ALIASES, *(group.lower() for group in GROUPS), "all"]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if close:
        unique = dict.fromkeys(ALIASES.get(name, name) for name in close)
        return f"; did you mean {' or '.join(repr(name) for name in unique)}?"
    return f"; known tasks: {', '.join(TASKS)}"
