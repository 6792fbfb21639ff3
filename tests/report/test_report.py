"""`vqt report RUN_DIR`: the HTML page of a sweep run folder, its figures, an unfinished run, and user errors.

One tiny compressed sweep (random ViT-Ti at 32 px, 2 tasks, 2x2 grid, 2 seeds, 2 epochs) is killed after the
first seed of the second task, copied (the unfinished run), then resumed to the end (the finished run). The
Chromium test loads the page headless and reads what its inline script wrote (every <img> complete with a
natural width); it is skipped when no Chromium is installed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from tests.helpers import sweep_args
from vqt.cli.main import main
from vqt.methods.feature_selection import num_kept

TASKS = ("dsprites_ori", "clevr_count")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(data_root: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """{'unfinished': killed in clevr_count's seed phase, 'finished': the same run resumed to the end}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: see conftest.one_thread
    try:
        base = tmp_path_factory.mktemp("report")
        out = base / "run"
        args = sweep_args(data_root, out, ",".join(TASKS), "--compress", "0.7")
        mp = pytest.MonkeyPatch()
        mp.setenv("VQT_STOP_AFTER_UNITS", "11")  # dsprites_ori: 4 grid + 2 seeds; clevr_count: 4 grid + 1 seed
        try:
            assert main(args) == 130
        finally:
            mp.undo()
        unfinished = base / "unfinished"
        shutil.copytree(out, unfinished)
        assert main(args) == 0
        return {"unfinished": unfinished, "finished": out}
    finally:
        torch.set_num_threads(threads)


class Page(HTMLParser):
    """The <img> tags, the table cells and the text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells[-1] += data


def report(run: Path, capsys) -> tuple[Path, Page, str]:
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    page = run / "report.html"
    assert captured.out.strip() == f"report: {page}"
    return page, Page(page.read_text()), captured.err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    return struct.unpack(">II", data[16:24])


def assert_images_resolve(page: Path, parsed: Page) -> None:
    assert parsed.images
    for image in parsed.images:
        path = page.parent / str(image["src"])
        assert path.is_file() and path.stat().st_size > 0, image["src"]
        width, height = png_size(path)
        assert width > 100 and height > 100, (image["src"], width, height)
        assert image["alt"]


def test_report_of_a_finished_compressed_run(runs: dict[str, Path], capsys) -> None:
    run = runs["finished"]
    page, parsed, err = report(run, capsys)
    assert err == ""  # finished: no note
    assert_images_resolve(page, parsed)
    figures = sorted((str(i["data-figure"]), Path(str(i["src"])).name) for i in parsed.images)
    assert figures == sorted((kind, f"{task}-{name}.png") for task in TASKS for kind, name in
                             (("heatmap", "heatmap"), ("grid-curves", "grid"), ("final-curves", "final"),
                              ("kept", "kept")))
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(f for _, f in figures)

    # The table is results.md's: a row per task with the same numbers, then the group means.
    rows = json.loads((run / "summary.json").read_text())["rows"]
    cells = parsed.cells
    for row in rows:
        at = cells.index(row["task"])
        assert cells[at + 1] == "Structured"
        assert f"{row['test_mean']:.2f} ± {row['test_std']:.2f}" in cells[at:at + 12]
        assert f"{row['compressed_mean']:.2f} ± {row['compressed_std']:.2f}" in cells[at:at + 12]
    for header in ("Task", "test (mean ± std)", "compressed (mean ± std)", "Structured", "Mean"):
        assert header in cells
    text = "".join(parsed.text)
    assert "status complete" in text and "unfinished" not in text.lower()


def test_kept_feature_groups_are_the_compressed_heads_indices(runs: dict[str, Path]) -> None:
    from safetensors.numpy import load_file

    from vqt.report.load import load_run

    run = load_run(runs["finished"])
    for task in run.tasks:
        assert [k.seed for k in task.kept] == [0, 1] and task.kept_note is None
        for kept in task.kept:
            names = [name for name, _, _ in kept.pieces]
            assert names == ["pre-logits"] + [f"layer {i}" for i in range(12)]  # ViT-Ti: 12 layers, Q=1, D=192
            assert {total for _, _, total in kept.pieces} == {192}
            indices = load_file(str(runs["finished"] / "tasks" / task.name / "final" / f"seed{kept.seed}" /
                                    "adapter-compressed" / "trained.safetensors"))["head.indices"]
            assert sum(k for _, k, _ in kept.pieces) == len(indices) == num_kept(13 * 192, 0.7)
            first = sum(1 for i in indices if i < 192)
            assert kept.pieces[0][1] == first
            assert math.isclose(kept.fraction, len(indices) / (13 * 192))


def test_head2toe_layout_matches_the_model() -> None:
    from tests.tiny_models import tiny_vit
    from vqt.backbone.sources import describe
    from vqt.methods.head2toe import Head2Toe
    from vqt.report.load import feature_pieces

    backbone = tiny_vit()
    for kwargs in ({}, {"sources": ["norm1"], "pool_sizes": [1, 2]}):
        model = Head2Toe(backbone, 3, **kwargs)
        config = {"method": "head2toe", "method_kwargs": kwargs, "architecture": describe(backbone)}
        pieces = feature_pieces(config, {})
        assert sum(width for _, width in pieces) == model.feature_dim
        assert [name for name, _ in pieces] == ["pre-logits"] + [f"layer {i}" for i in range(len(backbone.blocks))]


def test_report_of_an_unfinished_run_says_so(runs: dict[str, Path], capsys) -> None:
    run = runs["unfinished"]
    page, parsed, err = report(run, capsys)
    assert err.startswith("vqt: note: unfinished run: 1 of 2 tasks finished; clevr_count in progress (grid 4/4 "
                          "configurations, 1/2 seeds)")
    assert err.count("\n") == 1
    assert_images_resolve(page, parsed)
    text = " ".join("".join(parsed.text).split())
    assert "Unfinished run: 1 of 2 tasks finished" in text and "status unfinished" in text
    at = parsed.cells.index("clevr_count")
    assert "in progress (grid 4/4 configurations, 1/2 seeds)" in parsed.cells[at:at + 12]
    # The unfinished task still shows its grid and its one committed seed (and what that seed's head kept).
    kinds = sorted(str(i["data-figure"]) for i in parsed.images if str(i["src"]).startswith("report/clevr_count"))
    assert kinds == ["final-curves", "grid-curves", "heatmap", "kept"]


@pytest.mark.parametrize("case", ["missing", "file", "empty", "train-run", "nothing-committed"])
def test_not_a_sweep_run_folder_is_one_line_and_exit_2(runs: dict[str, Path], tmp_path: Path, capsys,
                                                       case: str) -> None:
    path = tmp_path / "x"
    expected = {"missing": "no such run folder", "file": "is a file", "empty": "is not a vqt sweep run folder",
                "train-run": "is a `vqt train` run folder", "nothing-committed": "has not finished any grid"}[case]
    if case == "file":
        path.write_text("hello")
    elif case == "empty":
        path.mkdir()
    elif case == "train-run":
        path.mkdir()
        (path / "config.yaml").write_text("backbone: x\nlr: 0.1\nwd: 0.0001\ntask: dsprites_ori\n")
    elif case == "nothing-committed":
        path.mkdir()
        shutil.copy(runs["finished"] / "config.yaml", path / "config.yaml")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqt: error: ") and expected in err and err.count("\n") == 1, err
    assert not (path / "report.html").exists() if path.is_dir() else True


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def loaded_images(page: Path, profile: Path) -> tuple[str, str]:
    """(body data-images, the missing-figures note) of the page after load in headless Chromium."""
    browser = chromium()
    assert browser is not None
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stdout[:500]
    images = re.search(r'data-images="([^"]*)"', body.group(0))
    note = re.search(r'<p class="banner error" id="missing-figures"( hidden(="")?)?>([^<]*)</p>', result.stdout)
    assert note, "the missing-figures note is not in the page"
    return (images.group(1) if images else "no data-images: the page's load script did not run"), note.group(3)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
                    "the page's images are still checked on disk by the other tests")
def test_every_figure_loads_in_headless_chromium(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    page, parsed, _ = report(runs["finished"], capsys)
    count = len(parsed.images)
    assert loaded_images(page, tmp_path / "profile") == (f"{count}/{count}", "")
    # The check is not vacuous: the page alone, without its report/ folder, loads none and says so.
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)
    images, note = loaded_images(alone, tmp_path / "profile")
    assert images == f"0/{count}"
    assert note.startswith(f"{count} of {count} figures did not load") and "keep the report/ folder" in note
