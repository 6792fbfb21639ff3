"""Image lists: VTAB-1k list folders, list/CSV files and ImageFolder trees, checked before any training starts.

Every problem names the list file, the line number and the path, because a silently dropped or mislabelled
image shifts results by less than the noise between seeds and is never found afterwards. With ``skip_bad=True``
bad entries are dropped instead and their reasons kept in `ImageList.skipped`, for the run summary.

Formats:
- VTAB-1k: ``<root>/<task>/{train800,val200,train800val200,test}.txt``; lines ``relative/path label``, paths
  relative to the task folder. The label is the *last* whitespace-separated field, so paths may hold spaces.
- list file: the same line format anywhere; or ``.csv`` with ``path,label`` rows (optional header row; with a
  class-names file the label may also be a class name).
- ImageFolder: one sub-folder per class, classes sorted by name, images found recursively.

Paths are checked lexically to stay inside the dataset root (symlinked image farms keep working).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from vqt.data.images import IMAGE_EXTENSIONS
from vqt.data.registry import SPLITS, find_task
from vqt.errors import DataError
from vqt.io import read_user_text

CLASSES_FILE = "classes.txt"
_LABEL = re.compile(r"[+-]?[0-9]+")
_HEADER_LABELS = {"label", "labels", "class", "class_id", "target", "y", "category"}


class LineError(ValueError):
    """A list line that cannot be parsed; the caller adds the file name and line number."""


@dataclass(frozen=True)
class Entry:
    """One image of a list: where it is, its label, and where that was written."""

    path: Path  # the image file (root / relpath)
    label: int
    relpath: str  # normalised POSIX path relative to the dataset root; what the list hash covers
    list_file: str  # the list file (or the folder, for ImageFolder)
    line: int  # 1-based line number in list_file; 0 when the entry was not read from a file

    @property
    def where(self) -> str:
        return f"{self.list_file}:{self.line}" if self.line else self.list_file


@dataclass(frozen=True)
class ImageList:
    """A checked, ordered list of entries: the unit a dataset, a feature store and a run summary refer to.

    Attributes:
        entries: one `Entry` per image (path, label, where it was listed), in list order.
        num_classes: number of classes (labels are 0 .. num_classes - 1).
        root: the folder the listed paths are relative to.
        source: the list file (or folder) the entries were read from; error messages name it.
        class_names: one name per label, when known (class-names file, ImageFolder sub-folders).
        skipped: one reason per entry dropped while reading (with `skip_bad=True`).
    """

    entries: tuple[Entry, ...]
    num_classes: int
    root: Path
    source: str
    class_names: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = field(default=())  # one reason per dropped entry (skip_bad=True)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[int]:
        """The label of every entry, in list order."""
        return [entry.label for entry in self.entries]

    def digest(self) -> str:
        """sha256 of the normalised ``relpath label`` lines, in order: changes iff the list's content changes."""
        return list_digest(self.entries)

    @cached_property
    def files_digest(self) -> str:
        """sha256 over each image file's size and modification time (see `files_digest`); computed once."""
        return files_digest(self.entries)

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for run metadata and feature stores.

        `sha256` covers the list's lines; `files_sha256` covers the image files themselves, so a store made
        before the images were regenerated in place is recognised as stale.
        """
        return {
            "source": self.source,
            "root": str(self.root),
            "entries": len(self.entries),
            "num_classes": self.num_classes,
            "sha256": self.digest(),
            "files_sha256": self.files_digest,
            "skipped": len(self.skipped),
        }


def list_digest(entries: Iterable[Entry]) -> str:
    """sha256 over ``f"{relpath} {label}\\n"`` for each entry, in list order."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.relpath} {entry.label}\n".encode())
    return digest.hexdigest()


def files_digest(entries: Iterable[Entry]) -> str:
    """sha256 over ``f"{relpath} {size} {mtime_ns}\n"`` of each image file, in list order.

    Why size + mtime and not the bytes: it costs one `stat` per image (well under a second for VTAB-1k's 1,000
    training images, a few seconds for a 70,000-image test list on a network file system) instead of reading
    every image, and any rewrite of a file (`vqt data synth` at another size, a re-encode, a copy without
    preserved times) changes it. A file rewritten with identical size *and* timestamp is not detected. A file
    that cannot be read is recorded as missing; loading it later names it and its list line.
    """
    digest = hashlib.sha256()
    for entry in entries:
        try:
            info = os.stat(entry.path)
            digest.update(f"{entry.relpath} {info.st_size} {info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{entry.relpath} missing\n".encode())
    return digest.hexdigest()


def parse_list_line(text: str) -> tuple[str, int] | None:
    """Split one ``relative/path label`` line; None for a blank line.

    The label is the last whitespace-separated field (so paths may contain spaces) and must be a decimal
    integer; range checks are the caller's, who knows the class count.
    """
    stripped = text.strip()
    if not stripped:
        return None
    fields = stripped.rsplit(None, 1)
    if len(fields) < 2:
        raise LineError("line has no label (expected 'relative/path label')")
    path, label = fields
    return path, _parse_label(label)


def _parse_label(label: str) -> int:
    if not _LABEL.fullmatch(label):
        raise LineError(f"label {label!r} is not an integer")
    return int(label)


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """A class-names file: one name per line, line i naming label i-1; blank trailing lines ignored."""
    lines = _read_text(Path(path)).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    for number, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path}:{number}: empty class name")
    if not names:
        raise DataError(f"{path}: class-names file is empty")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: duplicated class names: {', '.join(duplicated[:5])}")
    return names


def read_list(
    list_file: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    classes: str | os.PathLike[str] | Sequence[str] | None = None,
    skip_bad: bool = False,
    check_files: bool = True,
) -> ImageList:
    """Read a list file (``path label`` lines, or ``.csv`` rows) whose paths are relative to `root`.

    `root` defaults to the list file's folder. `classes` is a class-names file or a sequence of names; it fixes
    `num_classes` (they must agree when both are given). Without either, the class count is max label + 1.
    """
    list_path = Path(list_file)
    base = Path(root) if root is not None else list_path.parent
    names = _class_names(classes)
    num_classes = _agree_num_classes(num_classes, names, str(list_path))
    rows = _csv_rows(list_path, names) if list_path.suffix.lower() == ".csv" else _text_rows(list_path)
    builder = _Builder(base, str(list_path), num_classes, skip_bad, check_files)
    for line, parsed in rows:
        builder.add(line, parsed)
    return builder.finish(names)


def vtab_task_dir(root: str | os.PathLike[str], task: str) -> Path:
    """The folder of `task` under a VTAB-1k root; accepts canonical names and the archive's folder names."""
    base = Path(root)
    candidates = [base / task]
    info = find_task(task)
    if info is not None:
        candidates += [base / info.folder, base / info.name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"{base}: no folder for task {task!r} (looked for {', '.join(c.name for c in candidates)})"
    )


def read_vtab_split(
    root: str | os.PathLike[str],
    task: str,
    split: str,
    num_classes: int | None = None,
    skip_bad: bool = False,
    check_files: bool = True,
) -> ImageList:
    """Read one split of a VTAB-1k task folder; paths in the list are relative to the task folder.

    The class count comes from, in order: `num_classes`, the task's ``classes.txt`` (written by
    ``vqt data synth``), the VTAB-1k registry; it is inferred (max label + 1) only for unknown tasks.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    task_dir = vtab_task_dir(root, task)
    list_file = task_dir / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(
            f"{list_file}: list file not found (a VTAB-1k task folder holds {', '.join(SPLITS)}.txt)"
        )
    classes_file = task_dir / CLASSES_FILE
    classes = classes_file if classes_file.is_file() else None
    if num_classes is None and classes is None:
        info = find_task(task_dir.name) or find_task(task)
        num_classes = info.num_classes if info is not None else None
    return read_list(list_file, task_dir, num_classes, classes, skip_bad, check_files)


def read_image_folder(
    root: str | os.PathLike[str],
    skip_bad: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ImageList:
    """An ImageFolder tree: label i is the i-th sub-folder in sorted order; files of other types are ignored."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"{base}: image folder not found")
    class_dirs = sorted(
        child.name for child in base.iterdir() if child.is_dir() and not child.name.startswith(".")
    )
    if not class_dirs:
        raise DataError(f"{base}: no class sub-folders (expected one folder of images per class)")
    wanted = {extension.lower() for extension in extensions}
    builder = _Builder(base, str(base), len(class_dirs), skip_bad, check_files=False)
    empty: list[str] = []
    for label, name in enumerate(class_dirs):
        files = sorted(_walk_files(base / name))
        images = [path for path in files if path.suffix.lower() in wanted]
        if not images:
            empty.append(name)
        for path in images:
            builder.add(0, (path.relative_to(base).as_posix(), label))
    if empty:
        warnings.warn(f"{base}: class folders without images: {', '.join(empty[:10])}", stacklevel=2)
    return builder.finish(tuple(class_dirs))


def _walk_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def _read_text(path: Path) -> str:
    return read_user_text(path, error=DataError, encoding="utf-8-sig")  # -sig: a byte-order mark is not text


def _text_rows(path: Path) -> Iterator[tuple[int, tuple[str, int] | LineError]]:
    for number, text in enumerate(_read_text(path).splitlines(), start=1):
        try:
            parsed = parse_list_line(text)
        except LineError as error:
            yield number, error
            continue
        if parsed is not None:
            yield number, parsed


def _csv_rows(path: Path, names: tuple[str, ...] | None) -> Iterator[tuple[int, tuple[str, int] | LineError]]:
    by_name = {name: index for index, name in enumerate(names or ())}
    reader = csv.reader(_read_text(path).splitlines())
    first = True
    for row in reader:
        number = reader.line_num
        fields = [value.strip() for value in row]
        if not any(fields):
            continue
        if first:
            first = False
            if fields[-1].lower() in _HEADER_LABELS and not _LABEL.fullmatch(fields[-1]):
                continue
        if len(fields) < 2 or not fields[0]:
            yield number, LineError("row has no label (expected 'path,label')")
            continue
        image_path, label = ",".join(fields[:-1]), fields[-1]
        if label in by_name and not _LABEL.fullmatch(label):
            yield number, (image_path, by_name[label])
            continue
        try:
            yield number, (image_path, _parse_label(label))
        except LineError:
            hint = " or a name from the class-names file" if names else ""
            yield number, LineError(f"label {label!r} is not an integer{hint}")


def _class_names(classes: str | os.PathLike[str] | Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        return read_class_names(classes)
    return tuple(classes)


def _agree_num_classes(num_classes: int | None, names: tuple[str, ...] | None, source: str) -> int | None:
    if num_classes is not None and num_classes < 1:
        raise DataError(f"{source}: number of classes must be positive, got {num_classes}")
    if names is None:
        return num_classes
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{source}: {len(names)} class names but {num_classes} classes expected")
    return len(names)


def _relative(relpath: str) -> str:
    """Normalise a list path to POSIX form relative to the root; LineError if it is absolute or escapes."""
    if os.path.isabs(relpath) or relpath.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", relpath):
        raise LineError(f"{relpath}: absolute path (list paths must be relative to the dataset root)")
    normal = os.path.normpath(relpath).replace(os.sep, "/")
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise LineError(f"{relpath}: path escapes the dataset root")
    return normal


class _Builder:
    """Collects entries, applying the checks shared by every format."""

    def __init__(self, root: Path, source: str, num_classes: int | None, skip_bad: bool, check_files: bool):
        self.root = root
        self.source = source
        self.num_classes = num_classes
        self.skip_bad = skip_bad
        self.check_files = check_files
        self.entries: list[Entry] = []
        self.skipped: list[str] = []
        self.first_line: dict[str, tuple[int, int]] = {}
        self.duplicates: list[str] = []

    def bad(self, line: int, message: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        if not self.skip_bad:
            raise DataError(f"{where}: {message}")
        self.skipped.append(f"{where}: {message}")

    def add(self, line: int, parsed: tuple[str, int] | LineError) -> None:
        if isinstance(parsed, LineError):
            self.bad(line, str(parsed))
            return
        raw_path, label = parsed
        try:
            relpath = _relative(raw_path)
        except LineError as error:
            self.bad(line, str(error))
            return
        path = self.root / relpath
        if label < 0:
            self.bad(line, f"{raw_path}: negative label {label}")
            return
        if self.num_classes is not None and label >= self.num_classes:
            self.bad(
                line,
                f"{raw_path}: label {label} out of range (the task has {self.num_classes} classes, "
                f"0..{self.num_classes - 1})",
            )
            return
        if self.check_files and not path.is_file():
            self.bad(line, f"{raw_path}: image file not found ({path})")
            return
        if relpath in self.first_line:
            first, first_label = self.first_line[relpath]
            conflict = f" with a different label ({first_label} vs {label})" if first_label != label else ""
            self.duplicates.append(f"line {line} repeats line {first}{conflict}: {raw_path}")
        else:
            self.first_line[relpath] = (line, label)
        self.entries.append(Entry(path, label, relpath, self.source, line))

    def finish(self, names: tuple[str, ...] | None) -> ImageList:
        if not self.entries:
            detail = f" ({len(self.skipped)} bad entries skipped)" if self.skipped else ""
            raise DataError(f"{self.source}: empty list, no usable images{detail}")
        if self.duplicates:
            shown = "; ".join(self.duplicates[:5])
            more = f" (and {len(self.duplicates) - 5} more)" if len(self.duplicates) > 5 else ""
            warnings.warn(
                f"{self.source}: {len(self.duplicates)} duplicated entries: {shown}{more}", stacklevel=3
            )
        num_classes = self.num_classes
        if num_classes is None:
            num_classes = max(entry.label for entry in self.entries) + 1
        return ImageList(tuple(self.entries), num_classes, self.root, self.source, names, tuple(self.skipped))
