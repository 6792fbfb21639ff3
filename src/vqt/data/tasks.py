"""Tasks under a VTAB-1k root as a run uses them: names and groups resolved (a user's own folder is a task of
group "Other"), the root checked before any work, and each split read as an image list or a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqt.data.dataset import ImageListDataset
from vqt.data.lists import ImageList, read_vtab_split, vtab_task_dir
from vqt.data.registry import SPLITS, TASKS, find_task, resolve_tasks
from vqt.errors import DataError

OTHER_GROUP = "Other"


@dataclass(frozen=True)
class TaskSpec:
    """A task as a run uses it: canonical name, folder, class count, group and default Q."""

    name: str
    group: str
    default_queries: int
    official_compress: bool


def resolve_task_list(spec: str | list[str], data_root: str | Path | None = None) -> list[TaskSpec]:
    """'all', a group, or names (comma list); a folder under `data_root` that is no VTAB-1k task is accepted
    as a task of group 'Other' (Q=1, not compressed)."""
    parts = spec if isinstance(spec, list) else [p.strip() for p in str(spec).split(",") if p.strip()]
    names: list[str] = []
    for part in parts:
        try:
            expanded = resolve_tasks(part)
        except DataError:
            if data_root is not None and (Path(data_root) / part).is_dir():
                expanded = [part]
            else:
                raise
        if data_root is not None and _own_folder(Path(data_root), part, expanded):
            expanded = [part]
        names.extend(n for n in expanded if n not in names)
    result = []
    for name in names:
        info = TASKS.get(name)
        if info is None:
            result.append(TaskSpec(name, OTHER_GROUP, 1, False))
        else:
            result.append(TaskSpec(info.name, info.group, info.queries, info.compress))
    return result


def _own_folder(root: Path, part: str, expanded: list[str]) -> bool:
    """`part` is a user's folder that only shares its name with a VTAB-1k alias (`pets`, `flowers`, ...).

    True when `root/part` exists and no folder of the task the alias names does: read as that task, it could not
    be found at all, so it is the user's own task.
    """
    if len(expanded) != 1 or expanded[0] == part or not (root / part).is_dir():
        return False
    info = TASKS[expanded[0]]
    return not any((root / name).is_dir() for name in (info.name, info.folder))


def check_data_root(data_root: str | Path | None, tasks: list[TaskSpec], splits: tuple[str, ...] = SPLITS) -> None:
    """Fail before any work when a task folder or one of its list files is missing."""
    if data_root is None:
        raise DataError("no dataset root given (--data-root); make one with `vqt data synth` or point it at the "
                        "VTAB-1k image-list folder")
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist")
    for task in tasks:
        folder = vtab_task_dir(root, task.name)
        missing = [s for s in splits if not (folder / f"{s}.txt").is_file()]
        if missing:
            raise DataError(f"{folder}: no list files {', '.join(m + '.txt' for m in missing)} (a VTAB-1k task "
                            f"folder holds {', '.join(s + '.txt' for s in SPLITS)}; see `vqt data synth`)")


def read_split(data_root: str | Path, task: str, split: str) -> ImageList:
    return read_vtab_split(data_root, task, split)


def class_names(images: ImageList) -> list[str]:
    if images.class_names is not None:
        return list(images.class_names)
    return [str(i) for i in range(images.num_classes)]


def make_dataset(images: ImageList, transform: Callable[[Any], Any]) -> ImageListDataset:
    return ImageListDataset(images, transform)


def dataset_meta(task: str, split: str, images: ImageList) -> dict[str, Any]:
    return {"task": task, "split": split, **images.describe()}


def known_task(name: str) -> bool:
    return find_task(name) is not None
