"""Image lists: every bad input gets a clear error naming file, line and path; or is skipped and counted."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vqt.data.lists import (
    LineError,
    list_digest,
    parse_list_line,
    read_image_folder,
    read_list,
    read_vtab_split,
)
from vqt.errors import DataError


def _image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "sub dir/c d.png"):
        _image(tmp_path / "images" / name)
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- the line parser -------------------------------------------------------------------------------------

path_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
        min_size=1,
    )
    .map(str.strip)
    .filter(bool)
)


@given(
    path=path_text,
    label=st.integers(min_value=-(10**6), max_value=10**6),
    sep=st.sampled_from([" ", "\t", "  ", " \t "]),
)
def test_parse_line_roundtrip(path: str, label: int, sep: str) -> None:
    assert parse_list_line(f"{path}{sep}{label}\n") == (path, label)
    assert parse_list_line(f"  {path}{sep}{label}  \r\n") == (path, label)


@given(path=path_text.filter(lambda p: len(p.split()) == 1))
def test_parse_line_without_label(path: str) -> None:
    with pytest.raises(LineError, match="no label"):
        parse_list_line(path)


non_integer = (
    st.text(min_size=1)
    .map(str.strip)
    .filter(lambda s: s and len(s.split()) == 1 and not re.fullmatch(r"[+-]?[0-9]+", s))
)


@given(path=path_text, label=non_integer)
def test_parse_line_rejects_non_integer_labels(path: str, label: str) -> None:
    """Anything but ASCII decimal digits is refused, including '1.0', '1e3', '٣' and '1_000'."""
    with pytest.raises(LineError, match="not an integer"):
        parse_list_line(f"{path} {label}")


def test_parse_blank_line() -> None:
    assert parse_list_line("   \n") is None


# ---- list files --------------------------------------------------------------------------------------------


def test_read_list_with_spaces_in_paths(root: Path) -> None:
    lists = _write(root / "train.txt", "images/a.png 0\nimages/sub dir/c d.png 2\n\n")
    images = read_list(lists, num_classes=3)
    assert [entry.relpath for entry in images.entries] == ["images/a.png", "images/sub dir/c d.png"]
    assert images.labels == [0, 2]
    assert images.entries[1].line == 2 and images.entries[1].path.is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "images/a.png 0\nimages/missing.png 1\n",
            r"train\.txt:2: images/missing\.png: image file not found",
        ),
        ("images/a.png 0\nimages/b.png\n", r"train\.txt:2: line has no label"),
        ("images/a.png zero\n", r"train\.txt:1: label 'zero' is not an integer"),
        ("images/a.png 1.0\n", r"train\.txt:1: label '1\.0' is not an integer"),
        ("images/a.png 0\nimages/b.png 3\n", r"train\.txt:2: images/b\.png: label 3 out of range"),
        ("images/a.png -1\n", r"train\.txt:1: images/a\.png: negative label -1"),
        ("../outside.png 0\n", r"train\.txt:1: \.\./outside\.png: path escapes the dataset root"),
        ("images/../../x.png 0\n", r"train\.txt:1: .*path escapes the dataset root"),
        ("/etc/passwd 0\n", r"train\.txt:1: /etc/passwd: absolute path"),
        ("\n\n", r"train\.txt: empty list"),
    ],
)
def test_bad_list_lines(root: Path, text: str, message: str) -> None:
    lists = _write(root / "train.txt", text)
    with pytest.raises(DataError, match=message):
        read_list(lists, num_classes=3)


def test_missing_list_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        read_list(tmp_path / "nope.txt")


def test_duplicates_warn(root: Path) -> None:
    lists = _write(root / "train.txt", "images/a.png 0\nimages/b.png 1\nimages/a.png 1\n")
    with pytest.warns(
        UserWarning, match=r"1 duplicated entries: line 3 repeats line 1 with a different label"
    ):
        images = read_list(lists, num_classes=3)
    assert len(images) == 3


def test_skip_bad_counts_and_names_reasons(root: Path) -> None:
    text = (
        "images/a.png 0\nimages/missing.png 1\nimages/b.png x\nimages/b.png 9\n../up.png 0\nimages/b.png 1\n"
    )
    lists = _write(root / "train.txt", text)
    images = read_list(lists, num_classes=3, skip_bad=True)
    assert images.labels == [0, 1]
    assert len(images.skipped) == 4
    assert [reason.split(": ")[0].rsplit(":", 1)[1] for reason in images.skipped] == ["2", "3", "4", "5"]
    assert images.describe()["skipped"] == 4


def test_skip_bad_still_refuses_an_all_bad_list(root: Path) -> None:
    lists = _write(root / "train.txt", "images/missing.png 0\n")
    with pytest.raises(DataError, match=r"empty list.*1 bad entries skipped"):
        read_list(lists, skip_bad=True)


def test_digest_depends_on_content_only(root: Path, tmp_path: Path) -> None:
    first = read_list(_write(root / "one.txt", "images/a.png 0\nimages/./b.png 1\n"), num_classes=2)
    second = read_list(_write(root / "two.txt", "  images/a.png\t0\r\nimages/b.png 1\n"), num_classes=2)
    relabelled = read_list(_write(root / "three.txt", "images/a.png 1\nimages/b.png 1\n"), num_classes=2)
    assert first.digest() == second.digest() == list_digest(second.entries)
    assert first.digest() != relabelled.digest()
    assert len(first.digest()) == 64


def test_csv_with_header_and_class_names(root: Path) -> None:
    _write(root / "names.txt", "cat\ndog\nbird\n")
    lists = _write(root / "data.csv", 'path,label\nimages/a.png,dog\n"images/sub dir/c d.png",2\n')
    images = read_list(lists, classes=root / "names.txt")
    assert images.labels == [1, 2]
    assert images.class_names == ("cat", "dog", "bird")
    assert images.entries[1].line == 3


def test_csv_unknown_class_name(root: Path) -> None:
    _write(root / "names.txt", "cat\ndog\n")
    lists = _write(root / "data.csv", "images/a.png,horse\n")
    with pytest.raises(DataError, match=r"data\.csv:1: label 'horse' is not an integer or a name"):
        read_list(lists, classes=root / "names.txt")


def test_class_count_disagreement(root: Path) -> None:
    _write(root / "names.txt", "cat\ndog\n")
    with pytest.raises(DataError, match="2 class names but 3 classes expected"):
        read_list(_write(root / "t.txt", "images/a.png 0\n"), num_classes=3, classes=root / "names.txt")


# ---- VTAB-1k folders and ImageFolder -------------------------------------------------------------------


def test_vtab_split_uses_registry_class_count_and_folder_alias(tmp_path: Path) -> None:
    task = tmp_path / "cifar"  # the archive's folder name for cifar100
    _image(task / "images" / "x.png")
    _write(task / "train800.txt", "images/x.png 99\n")
    assert read_vtab_split(tmp_path, "cifar100", "train800").num_classes == 100
    _write(task / "val200.txt", "images/x.png 100\n")
    with pytest.raises(
        DataError, match=r"val200\.txt:1: images/x\.png: label 100 out of range \(the task has 100"
    ):
        read_vtab_split(tmp_path, "cifar100", "val200")
    with pytest.raises(DataError, match=r"test\.txt: list file not found"):
        read_vtab_split(tmp_path, "cifar100", "test")
    with pytest.raises(DataError, match="unknown split"):
        read_vtab_split(tmp_path, "cifar100", "train")


def test_image_folder(tmp_path: Path) -> None:
    _image(tmp_path / "dog" / "1.png")
    _image(tmp_path / "cat" / "nested" / "2.jpg")
    _image(tmp_path / "cat" / "1.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = read_image_folder(tmp_path)
    assert any("without images: empty" in str(w.message) for w in caught)
    assert images.class_names == ("cat", "dog", "empty")
    assert [(e.relpath, e.label) for e in images.entries] == [
        ("cat/1.png", 0),
        ("cat/nested/2.jpg", 0),
        ("dog/1.png", 1),
    ]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        read_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
