"""A sweep killed anywhere — between chunks, between two units of one chunk, in the seed phase — resumes to the
results of an uninterrupted run. A chunk is skipped only when *all* its units committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def references(data_root: Path, tmp_path_factory):  # noqa: F811
    """The uninterrupted run of each --grid-chunk (made once per module)."""
    made: dict[str, Path] = {}

    def reference(grid_chunk: str) -> Path:
        if grid_chunk not in made:
            out = tmp_path_factory.mktemp("uninterrupted") / "run"
            assert main(sweep_args(data_root, out, "dsprites_ori", "--grid-chunk", grid_chunk)) == 0
            made[grid_chunk] = out
        return made[grid_chunk]

    return reference


@pytest.mark.parametrize(
    ("grid_chunk", "stop_after", "where"),
    [
        ("0", 1, "after the 1st of 4 grid units of one chunk"),
        ("3", 2, "inside the first of two grid chunks"),
        ("0", 5, "after the 1st of 2 seeds trained together"),
    ],
)
def test_killed_mid_chunk_resumes_to_the_uninterrupted_results(
    data_root: Path, references, tmp_path: Path, monkeypatch, grid_chunk: str, stop_after: int,  # noqa: F811
    where: str,
) -> None:
    out = tmp_path / "run"
    args = sweep_args(data_root, out, "dsprites_ori", "--grid-chunk", grid_chunk)
    monkeypatch.setenv("VQT_STOP_AFTER_UNITS", str(stop_after))
    assert main(args) == 130, where
    monkeypatch.delenv("VQT_STOP_AFTER_UNITS")
    committed = list(out.glob("tasks/dsprites_ori/*/*/result.json"))
    assert len(committed) == stop_after, where
    assert main(args) == 0, where
    reference = references(grid_chunk)
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text(), where
    assert len(list(out.glob("tasks/dsprites_ori/*/*/result.json"))) == 6  # 4 grid units + 2 seeds
