"""`vqt compare`: real tiny sweep run folders side by side, the memory cache, and the refusals.

The sweeps are the tiny ones of tests/protocol/test_end_to_end.py (random ViT-Ti at 32 px, 2 epochs); the memory
measurement (`measure_all`, which spawns a process per method) is replaced by a fake that counts its calls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import BACKBONE, TINY, read_csv, sweep_args
from vqt.cli.main import main
from vqt.report import compare, tables

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--lrs", "0.1", "--wds", "0", "--seeds", "1"]  # runs that only need to exist (refusals)
FAKE = {  # method (and tuned layers) -> (saved MiB/sample, peak MiB, step increase MiB)
    "linear": (0.01, 500.0, 5.0),
    "head2toe": (0.05, 520.0, 20.0),
    "vqt": (0.2, 600.0, 80.0),
    "vpt-deep": (1.0, 900.0, 400.0),
    "vpt-deep/1": (0.3, 700.0, 120.0),
    "adaptformer/1": (0.24, 690.0, 110.0),
}


def small_sweep(data_root: Path, out: Path, tasks: str, *extra: str) -> Path:  # noqa: F811
    args = ["sweep", *BACKBONE, "--data-root", str(data_root), "--tasks", tasks, *SMALL, *TINY, "--out", str(out),
            *extra]  # a later --backbone / --img-size wins over BACKBONE's
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def runs(data_root: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    from torch import get_num_threads, set_num_threads

    threads = get_num_threads()
    set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out = {
        "linear": root / "linear",
        "head2toe": root / "head2toe",
        "vqt": root / "vqt",
    }
    assert main(sweep_args(data_root, out["linear"], "dsprites_ori,clevr_count", "--method", "linear")) == 0
    assert main(sweep_args(data_root, out["head2toe"], "dsprites_ori,clevr_count", "--method", "head2toe")) == 0
    assert main(sweep_args(data_root, out["vqt"], "dsprites_ori", "--method", "vqt")) == 0
    set_num_threads(threads)
    return out


@pytest.fixture
def fake_measure(monkeypatch) -> list[list[str]]:
    """Replace `vqt.bench.methods.measure_all`; the returned list records each call's methods."""
    calls: list[list[str]] = []

    def measure_all(methods, backbone, batch, img_size, steps=2, device="cpu", num_classes=100, progress=True,
                    method_kwargs=None):
        kwargs = method_kwargs or [None] * len(methods)
        names = [m if not k else f"{m}/{k['tuned_layers']}" for m, k in zip(methods, kwargs, strict=True)]
        calls.append(names)
        assert backbone == "vit_tiny_patch16_224@random" and img_size == 32 and device == "cpu"
        return [{"method": m, "store_trainable": True, "trainable_params": 1000 + i,
                 "saved_mib_per_sample": FAKE[n][0], "peak_mib": FAKE[n][1], "step_increase_mib": FAKE[n][2],
                 "step_s": 0.1, "timed_steps": 0} for i, (m, n) in enumerate(zip(methods, names, strict=True))]

    monkeypatch.setattr("vqt.bench.methods.measure_all", measure_all)
    return calls


def copy_runs(runs: dict[str, Path], tmp_path: Path, *names: str) -> list[Path]:
    """Fresh copies (no memory.json from another test)."""
    copies = []
    for name in names:
        shutil.copytree(runs[name], tmp_path / name, ignore=shutil.ignore_patterns("stores"))
        copies.append(tmp_path / name)
    return copies


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_table_csv_plot_and_numbers(runs, tmp_path: Path, fake_measure, capsys) -> None:
    linear, head2toe = copy_runs(runs, tmp_path, "linear", "head2toe")
    out = tmp_path / "cmp"
    assert main(["compare", str(linear), str(head2toe), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    for name in ("compare.md", "compare.csv", "compare_methods.csv", "accuracy_vs_memory.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Tasks x methods: each cell is the run's own summary row; group means are the run's (same tasks).
    rows = read_csv(out / "compare.csv")
    assert [r["task"] for r in rows] == ["dsprites_ori", "clevr_count", "Natural", "Specialized", "Structured", "Mean"]
    for run, label in ((linear, "linear"), (head2toe, "head2toe")):
        s = summary(run)
        for row in s["rows"]:
            line = next(r for r in rows if r["task"] == row["task"])
            assert float(line[label]) == pytest.approx(row["test_mean"], abs=1e-4)
            assert float(line[f"{label} std"]) == pytest.approx(row["test_std"], abs=1e-4)
        for group, value in s["group_means"].items():
            line = next(r for r in rows if r["task"] == group)
            assert line["group"] == "mean"
            assert (line[label] == "") if value is None else float(line[label]) == pytest.approx(value, abs=1e-4)

    # One row per method: mean accuracy, the fake memory numbers, the sweep's time, parameters from the adapters.
    methods = {r["method"]: r for r in read_csv(out / "compare_methods.csv")}
    assert set(methods) == {"linear", "head2toe"}
    for run, label in ((linear, "linear"), (head2toe, "head2toe")):
        m, s = methods[label], summary(run)
        assert float(m["mean_accuracy"]) == pytest.approx(s["group_means"]["Mean"], abs=1e-4)
        assert float(m["saved_mib_per_sample"]) == FAKE[label][0]
        assert float(m["peak_mib"]) == FAKE[label][1]
        assert float(m["seconds"]) == s["seconds"]
        assert m["status"] == "complete" and m["memory_error"] == ""
    # linear: a 192-dim head per task (dsprites_ori 16 classes, clevr_count 8): (193*16 + 193*8) / 2
    assert float(methods["linear"]["trainable_params"]) == pytest.approx((193 * 16 + 193 * 8) / 2)
    assert float(methods["head2toe"]["trainable_params"]) > float(methods["linear"]["trainable_params"])

    markdown = (out / "compare.md").read_text()
    for text in ("| Task | Group | linear | head2toe |", "| **Mean** |", "saved MiB/sample", "peak MiB",
                 "training time (s)"):
        assert text in markdown
    assert "Note:" not in markdown  # same tasks: nothing left out
    assert markdown in capsys.readouterr().out


def test_partial_overlap_uses_common_tasks(runs, tmp_path: Path, fake_measure, capsys) -> None:
    linear, vqt = copy_runs(runs, tmp_path, "linear", "vqt")
    out = tmp_path / "cmp"
    assert main(["compare", str(linear), str(vqt), "--out", str(out), "--device", "cpu", "--no-memory"]) == 0
    printed = capsys.readouterr().out
    assert "compared on the 1 task(s) common to all runs (dsprites_ori); left out: clevr_count (linear)" in printed
    assert "Note: compared on the 1 task(s)" in (out / "compare.md").read_text()
    rows = read_csv(out / "compare.csv")
    assert [r["task"] for r in rows] == ["dsprites_ori", "Natural", "Specialized", "Structured", "Mean"]
    # The linear run's means are recomputed over dsprites_ori alone (tables.group_means), not read from its summary.
    only = [r for r in summary(linear)["rows"] if r["task"] == "dsprites_ori"]
    mean = next(r for r in rows if r["task"] == "Mean")
    assert float(mean["linear"]) == pytest.approx(tables.group_means(only)["Mean"], abs=1e-4)
    # --no-memory: nothing measured, no plot, memory cells empty
    assert fake_measure == []
    assert not (out / "accuracy_vs_memory.png").exists()
    assert all(r["peak_mib"] == "" for r in read_csv(out / "compare_methods.csv"))


def test_memory_measured_once_then_cached(runs, tmp_path: Path, fake_measure) -> None:
    linear, head2toe, vqt = copy_runs(runs, tmp_path, "linear", "head2toe", "vqt")
    args = ["compare", str(linear), str(head2toe), str(vqt), "--device", "cpu", "--batch", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert fake_measure == [["linear", "head2toe", "vqt"]]  # one call, each method once
    cache = json.loads((vqt / compare.MEMORY_FILE).read_text())
    assert cache["format"] == compare.MEMORY_FORMAT and cache["format_version"] == 1
    (entry,) = cache["entries"]
    assert {k: entry[k] for k in compare.MEMORY_KEY} == {
        "backbone": "vit_tiny_patch16_224@random", "batch": 4, "img_size": 32, "device": "cpu", "method": "vqt"}
    assert entry["saved_mib_per_sample"] == FAKE["vqt"][0]

    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert len(fake_measure) == 1  # read from the caches
    assert (tmp_path / "a" / "compare_methods.csv").read_text() == (tmp_path / "b" / "compare_methods.csv").read_text()
    assert (tmp_path / "b" / "accuracy_vs_memory.png").stat().st_size > 0

    # Another batch is another key: measured (for every method), added beside the first entry.
    assert main(["compare", str(linear), str(vqt), "--device", "cpu", "--batch", "8",
                 "--out", str(tmp_path / "c")]) == 0
    assert fake_measure[1] == ["linear", "vqt"]
    assert [e["batch"] for e in json.loads((vqt / compare.MEMORY_FILE).read_text())["entries"]] == [4, 8]
    # --no-memory still shows what is cached.
    assert main([*args, "--no-memory", "--out", str(tmp_path / "d")]) == 0
    assert len(fake_measure) == 2
    assert read_csv(tmp_path / "d" / "compare_methods.csv")[2]["peak_mib"] == str(FAKE["vqt"][1])


def test_failed_measurement_is_marked_and_not_cached(runs, tmp_path: Path, monkeypatch, capsys) -> None:
    (linear,) = copy_runs(runs, tmp_path, "linear")
    monkeypatch.setattr("vqt.bench.methods.measure_all",
                        lambda methods, *a, **k: [{"method": m, "error": "out of memory"} for m in methods])
    assert main(["compare", str(linear), "--device", "cpu", "--out", str(tmp_path / "cmp")]) == 1
    assert "memory measurement failed for linear" in capsys.readouterr().err
    assert "failed: out of memory" in (tmp_path / "cmp" / "compare.md").read_text()
    assert not (linear / compare.MEMORY_FILE).exists()


def test_same_method_labelled_by_folder_or_refused(runs, tmp_path: Path, fake_measure, capsys) -> None:
    (linear,) = copy_runs(runs, tmp_path, "linear")
    other = tmp_path / "linear-bs16"
    shutil.copytree(linear, other)
    assert main(["compare", str(linear), str(other), "--no-memory", "--out", str(tmp_path / "cmp")]) == 0
    assert "| Task | Group | linear (linear) | linear (linear-bs16) |" in (tmp_path / "cmp" / "compare.md").read_text()
    same_name = tmp_path / "elsewhere" / "linear"
    shutil.copytree(linear, same_name)
    assert main(["compare", str(linear), str(same_name), "--no-memory", "--out", str(tmp_path / "x")]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["compare", str(linear), str(linear), "--no-memory", "--out", str(tmp_path / "x")]) == 2
    assert "given twice" in capsys.readouterr().err


@pytest.mark.parametrize(("tasks", "extra", "message"), [
    ("dsprites_ori", ["--backbone", "deit_tiny_patch16_224@random"],
     "other backbone: vit_tiny_patch16_224@random vs deit_tiny_patch16_224@random"),
    ("dsprites_ori", ["--transform", "official"], "other transform: name \"backbone\" vs \"official\""),
    ("dsprites_ori", ["--img-size", "48"], "other image size: 32 vs 48"),
    ("dsprites_ori", ["--precision", "bf16"], "other precision: fp32 vs bf16"),
    ("clevr_count", ["--method", "vqt"], "no task in common"),
])
def test_refusals(runs, data_root: Path, tmp_path: Path, fake_measure, capsys, tasks, extra, message) -> None:  # noqa: F811
    run = small_sweep(data_root, tmp_path / "other", tasks, *extra)
    capsys.readouterr()
    assert main(["compare", str(runs["vqt"]), str(run), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqt: error: ") and message in err and "\n" not in err, err
    assert fake_measure == [] and not (tmp_path / "cmp").exists()


def test_not_a_run_folder(runs, tmp_path: Path, capsys) -> None:
    assert main(["compare", str(runs["vqt"]), str(tmp_path / "missing")]) == 2
    assert "not a sweep run folder: " in capsys.readouterr().err
    adapter = runs["vqt"] / "tasks" / "dsprites_ori" / "final" / "seed0" / "adapter"
    assert main(["compare", str(runs["vqt"]), str(adapter)]) == 2
    assert "not a sweep run folder: " in capsys.readouterr().err
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.yaml").write_text("backbone: x\n")
    (odd / "summary.json").write_text('{"status": "complete"}')  # e.g. a `vqt train` summary
    assert main(["compare", str(runs["vqt"]), str(odd)]) == 2
    assert "no per-task rows" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shrunk_runs(data_root: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """VPT-deep unshrunk and on its last block, AdaptFormer on its last block (tiny online sweeps)."""
    root = tmp_path_factory.mktemp("shrunk")
    out = {"vpt-deep": root / "vpt-deep", "vpt-deep-1": root / "vpt-deep-1", "adaptformer-1": root / "adaptformer-1"}
    for name, method, extra in (("vpt-deep", "vpt-deep", []), ("vpt-deep-1", "vpt-deep", ["--tuned-layers", "1"]),
                                ("adaptformer-1", "adaptformer", ["--tuned-layers", "1"])):
        assert main(sweep_args(data_root, out[name], "dsprites_ori", "--method", method, *extra)) == 0
    return out


def test_memory_budgets_pick_each_methods_best_run_that_fits(runs, shrunk_runs, tmp_path: Path, fake_measure,
                                                             capsys) -> None:
    paths = copy_runs({**runs, **shrunk_runs}, tmp_path, "vqt", "vpt-deep", "vpt-deep-1", "adaptformer-1")
    out = tmp_path / "cmp"
    args = ["compare", *map(str, paths), "--device", "cpu", "--budgets", "0.25,0.5,1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    # The shrunk runs are measured as shrunk (their own key in the cache), each once.
    assert fake_measure == [["vqt", "vpt-deep", "vpt-deep/1", "adaptformer/1"]]
    entry = json.loads((paths[2] / compare.MEMORY_FILE).read_text())["entries"][0]
    assert entry["method_kwargs"] == {"tuned_layers": 1} and entry["saved_mib_per_sample"] == 0.3
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert len(fake_measure) == 1  # cached, shrunk ones included

    accuracy = {path.name: summary(path)["group_means"]["Mean"] for path in paths}
    budgets = read_csv(out / "memory_budgets.csv")
    cell = {(r["method"], float(r["budget_fraction"])): r for r in budgets}
    assert float(cell[("vpt-deep", 1.0)]["budget"]) == 1.0  # fractions of the unshrunk VPT-deep's 1.0 MiB/sample
    # 0.25 x: the unshrunk VPT-deep (1.0) and its 1-block run (0.3) are over; VQT (0.2) and AdaptFormer-1 (0.24) fit
    assert cell[("vpt-deep", 0.25)]["accuracy"] == ""
    assert float(cell[("vqt", 0.25)]["accuracy"]) == pytest.approx(accuracy["vqt"], abs=1e-4)
    assert cell[("adaptformer", 0.25)]["run"] == "adaptformer"
    # 0.5 x: only the 1-block VPT-deep fits; 1 x: the better of both VPT-deep runs
    assert cell[("vpt-deep", 0.5)]["run"] == "vpt-deep (vpt-deep-1)"
    best = max(("vpt-deep (vpt-deep)", accuracy["vpt-deep"]), ("vpt-deep (vpt-deep-1)", accuracy["vpt-deep-1"]),
               key=lambda pair: (pair[1], pair[0] == "vpt-deep (vpt-deep-1)"))
    assert cell[("vpt-deep", 1.0)]["run"] == best[0]
    assert float(cell[("vpt-deep", 1.0)]["accuracy"]) == pytest.approx(best[1], abs=1e-4)
    assert "## Accuracy under a training-memory budget" in (out / "compare.md").read_text()
    assert (out / "memory_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_budgets_need_the_reference_run(runs, tmp_path: Path, fake_measure, capsys) -> None:
    (vqt,) = copy_runs(runs, tmp_path, "vqt")
    assert main(["compare", str(vqt), "--device", "cpu", "--budgets", "0.5", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no vpt-deep run without --tuned-layers" in err, err


def test_frontier_is_the_best_accuracy_at_or_below_each_memory() -> None:
    from vqt.report.frontier import budget_table, frontier

    rows = [{"method": f"m{i}", "family": "a", "tuned_layers": None, "mean_accuracy": acc, "saved": mem}
            for i, (mem, acc) in enumerate([(3.0, 50.0), (1.0, 40.0), (2.0, 30.0), (4.0, 60.0), (5.0, 55.0)])]
    steps = frontier(rows, "saved")
    # plain reference: at each run's memory, the best accuracy of the runs at or below it; keep where it rises
    expected, best = [], -1.0
    for memory in sorted(r["saved"] for r in rows):
        value = max(r["mean_accuracy"] for r in rows if r["saved"] <= memory)
        if value > best:
            expected.append((memory, value))
            best = value
    assert steps == expected == [(1.0, 40.0), (3.0, 50.0), (4.0, 60.0)]
    table = budget_table(rows, "saved", [0.2, 0.5, 1.0], "a")
    assert table["reference_mib"] == 5.0
    assert [c and c["accuracy"] for c in table["rows"][0]["cells"]] == [40.0, 40.0, 60.0]


def test_a_users_own_task_has_a_mean_accuracy(shapes_root: Path, tmp_path: Path, fake_measure) -> None:
    """Tasks outside VTAB-1k are not in its group means: the comparison's mean is then over every compared task
    (it was None, so such runs had no point on the plot and no place in a memory budget)."""
    run = small_sweep(shapes_root, tmp_path / "mine", "my_shapes", "--method", "linear")
    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    expected = summary(run)["group_means"][tables.ALL_TASKS_MEAN]
    assert expected is not None
    (row,) = read_csv(out / "compare_methods.csv")
    assert float(row["mean_accuracy"]) == pytest.approx(expected, abs=1e-4)
    assert (out / "accuracy_vs_memory.png").is_file()
    rows = {r["task"]: r for r in read_csv(out / "compare.csv")}
    assert float(rows[tables.ALL_TASKS_MEAN]["linear"]) == pytest.approx(expected, abs=1e-4)
