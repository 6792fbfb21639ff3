"""The pieces of benchmarks/protocol_time.py and benchmarks/run_all.py: arithmetic, a tiny end-to-end run, the plan."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny_models import tiny_vit
from vqt.data.registry import TASKS

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def protocol_time():
    return load("protocol_time")


@pytest.fixture(scope="module")
def run_all():
    return load("run_all")


def counted_official_work(epochs: int, test: int, eval_every: int) -> tuple[int, int]:
    """The official-style protocol's image-steps and evaluation forwards, counted one epoch at a time."""
    train = evaluate = 0
    for _config in range(20):
        for epoch in range(epochs):
            train += 800
            if (epoch + 1) % eval_every == 0 or epoch == epochs - 1:
                evaluate += 200
    for _seed in range(5):
        for _epoch in range(epochs):
            train += 800 + 200
        evaluate += test
    return train, evaluate


@pytest.mark.parametrize(("epochs", "test", "eval_every"), [(100, 10_000, 10), (5, 200, 10), (7, 33, 3), (1, 1, 1)])
def test_workload_counts_the_official_work(protocol_time, epochs, test, eval_every):
    workload = protocol_time.Workload(epochs=epochs, test_images=test, eval_every=eval_every)
    assert (workload.official_train_images(), workload.official_eval_images()) == counted_official_work(
        epochs, test, eval_every
    )


def test_projection_uses_every_task_and_its_test_size(protocol_time):
    workload = protocol_time.Workload(epochs=100, test_images=10_000)
    measured = protocol_time.Measured(extract_s=30.0, assemble_s=2.0, grid_s=60.0, seeds_s=20.0, test_s=50.0,
                                      official_train_s_per_image=0.01, official_eval_s_per_image=0.004)
    rows = protocol_time.projection(measured, workload)
    assert [r[0] for r in rows] == list(TASKS) and len(rows) == 19
    train, evaluate = counted_official_work(100, 0, 10)
    for name, test, ours, official in rows:
        assert test == TASKS[name].test_images
        assert ours == pytest.approx(30 + 2 + 60 + 20 + 50 / 10_000 * test)
        assert official == pytest.approx(0.01 * train + 0.004 * (evaluate + 5 * test))
    assert TASKS["dsprites_loc"].test_images == 73_728 and TASKS["kitti"].test_images == 711


def test_tiny_protocol_end_to_end(protocol_time, tmp_path, one_thread):
    args = protocol_time.parse_args([
        "--model", "tiny", "--train-images", "16", "--val-images", "8", "--epochs", "2", "--test-images", "6",
        "--classes", "3", "--extract-batch", "8", "--probe-batch", "2", "--probe-steps", "1", "--warmup-steps", "1",
        "--device", "cpu", "--precision", "fp32", "--workdir", str(tmp_path), "--out", str(tmp_path / "r.md"),
    ])
    text = protocol_time.run(args, backbone=tiny_vit(), command="python benchmarks/protocol_time.py (test)")
    assert (tmp_path / "r.md").read_text() == text
    last = text.rstrip("\n").splitlines()[-1]
    match = re.fullmatch(r"protocol speed-up \(official-style / vqt\): (\d+\.\d)", last)
    assert match, last
    phases = re.findall(r"^\| (extraction|assembly|grid|seeds|test)\b[^|]*\| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert [p[0] for p in phases] == ["extraction", "assembly", "grid", "seeds", "test"]  # wall and CPU seconds
    assert "protocol speed-up by CPU seconds" in text
    assert float(match.group(1)) > 0
    for name in TASKS:
        assert f"| {name} | {TASKS[name].test_images:,} |" in text
    assert "CPU" in text and "torch " in text and "command: `python benchmarks/protocol_time.py (test)`" in text
    assert list(tmp_path.iterdir()) == [tmp_path / "r.md"]  # the temporary stores are gone


def test_precision_goes_to_functions_that_take_it(protocol_time):
    seen = {}

    def takes(x, precision="fp32"):
        seen["takes"] = precision
        return x

    def ignores(x):
        import torch

        seen["ignores"] = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16  # under bf16 autocast
        return x

    notes: list[str] = []
    assert protocol_time.with_precision(takes, "bf16", "cpu", notes)(1) == 1
    assert protocol_time.with_precision(ignores, "bf16", "cpu", notes)(2) == 2
    assert seen == {"takes": "bf16", "ignores": True}
    assert len(notes) == 1 and "ignores" in notes[0]


def test_run_all_plan_names_every_benchmark(run_all):
    for quick in (False, True):
        steps = run_all.plan("cuda", quick)
        names = [s.name for s in steps]
        assert names[0] == "gpu_tests" and ("other_tests" in names) is not quick
        scripts = {s.argv[1] for s in steps if s.argv[1].startswith("benchmarks/")}
        assert scripts == {f"benchmarks/{n}.py" for n in
                           ("memory", "methods_memory", "train_speed", "inference", "protocol_time")}
        for step in steps:
            if step.argv[1] != "benchmarks/train_speed.py" or run_all.takes(ROOT / step.argv[1], "--device"):
                assert "cuda" in step.argv or "-m" in step.argv


@pytest.mark.parametrize("script", ["memory", "methods_memory", "train_speed", "inference", "protocol_time"])
def test_run_all_passes_only_options_the_benchmarks_accept(run_all, script):
    """Each planned command's options appear in that script's --help (full and quick plans)."""
    helped = run_all.help_text(ROOT / "benchmarks" / f"{script}.py")
    assert helped.startswith("usage:")
    for quick in (False, True):
        for step in run_all.plan("cpu", quick):
            if step.argv[1] == f"benchmarks/{script}.py":
                for option in (a for a in step.argv[2:] if a.startswith("--")):
                    assert run_all.takes(ROOT / step.argv[1], option), f"{script}.py does not accept {option}"


def test_run_all_goes_on_past_a_failing_step(run_all, tmp_path, capsys):
    python = sys.executable
    steps = [
        run_all.Step("first", [python, "-c", "print('| a | b |')"]),
        run_all.Step("broken", [python, "-c", "import sys; print('partial'); sys.exit(3)"]),
        run_all.Step("last", [python, "-c", "print('done')"], note="a note"),
    ]
    outcomes = run_all.run_steps(steps, tmp_path, "cpu", quick=True)
    assert [o.returncode for o in outcomes] == [0, 3, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_cpu_quick.md", "first_cpu_quick.md",
                                                          "last_cpu_quick.md"]
    broken = (tmp_path / "broken_cpu_quick.md").read_text()
    assert "exit status 3" in broken and broken.rstrip().endswith("partial")
    assert "- date: " in broken and "torch " in broken and "CUDA " in broken and "command: `python -c" in broken
    assert "note: a note" in (tmp_path / "last_cpu_quick.md").read_text()
    table = run_all.summary(outcomes)
    assert "| broken | FAILED (exit 3) |" in table and "2 of 3 steps passed; failed: broken" in table


def test_run_all_dry_run_runs_nothing(run_all, tmp_path, capsys):
    assert run_all.main(["--device", "cpu", "--quick", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "protocol_time: python benchmarks/protocol_time.py --device cpu --quick" in printed
    assert str(tmp_path / "protocol_time_cpu_quick.md") in printed
    assert list(tmp_path.iterdir()) == []


def test_query_attention_benchmark_compares_both_paths(tmp_path, one_thread):
    """benchmarks/query_attention.py: both forms, the SDPA and explicit paths agree, the table is written."""
    out = tmp_path / "table.md"
    assert load("query_attention").main(["--model", "vit_tiny_patch16_224", "--batch", "1", "--queries", "1",
                                         "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| a")
            or line.startswith("| r")]
    assert [row[0].strip() for row in rows] == ["absorbed", "recompute"]
    for row in rows:
        assert float(row[7]) <= 1e-5 and float(row[8]) <= 1e-5  # the fused path is the same maths
        assert float(row[2]) > 0 and float(row[3]) > 0


# ---------------------------------------------------------------------- benchmarks/accuracy.py (real photographs)


@pytest.fixture(scope="module")
def accuracy():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    return load("accuracy")


def test_paired_bootstrap_interval(accuracy):
    import numpy as np

    same = np.array([1.0, 0.0, 1.0, 0.5])
    assert accuracy.paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    b = rng.integers(0, 2, 400).astype(float)
    a = np.maximum(b, rng.integers(0, 2, 400))  # right wherever b is, and on about half of the rest
    mean, low, high = accuracy.paired_bootstrap(a, b)
    assert mean == pytest.approx(100 * (a - b).mean()) and 0 < low < mean < high


def test_accuracy_pairs_ten_queries_with_one(accuracy):
    labels = ["linear", "head2toe", "vqt-q1", "vqt-q10"]
    assert accuracy.comparisons(labels) == [("vqt-q1", "head2toe"), ("vqt-q1", "linear"), ("vqt-q10", "head2toe"),
                                            ("vqt-q10", "linear"), ("vqt-q10", "vqt-q1")]
    assert accuracy.comparisons(["linear", "vqt-q10"]) == [("vqt-q10", "linear")]


def test_accuracy_header_names_seed_counts_that_differ(accuracy):
    row = {"methods": {"linear": {"seeds": [90.0] * 5}, "vqt-q10": {"seeds": [95.0] * 3}}}
    assert accuracy.seed_counts({"rows": [row], "seeds": 3}) == "seeds per method: linear 5, vqt-q10 3"
    row["methods"]["vqt-q10"]["seeds"] *= 5
    assert accuracy.seed_counts({"rows": [row], "seeds": 5}).startswith("seeds per method: linear 5, vqt-q10 15")
    row["methods"]["vqt-q10"]["seeds"] = [95.0] * 5
    assert accuracy.seed_counts({"rows": [row], "seeds": 3}) == "5 seeds"
    other_task = {"methods": {"linear": {"seeds": [90.0] * 5}, "vqt-q10": {"seeds": [95.0] * 3}}}
    assert accuracy.seed_counts({"rows": [row, other_task], "seeds": 5}) == "seeds per method: linear 5, vqt-q10 3/5"


def test_real_tasks_are_balanced_and_their_test_images_unseen(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_tasks

    for name in ("faces", "textures", "digits"):
        folder = real_tasks.build_task(name, tmp_path, cache=tmp_path / "cache", scale=0.2)
        lists = {s: (folder / f"{s}.txt").read_text().splitlines() for s in
                 ("train800", "val200", "train800val200", "test")}
        assert lists["train800val200"] == lists["train800"] + lists["val200"]
        assert not set(lists["train800val200"]) & set(lists["test"]) and lists["val200"]
        labels = [int(line.split()[1]) for line in lists["test"]]
        assert len(set(labels)) == len((folder / "classes.txt").read_text().split())  # every class in test
        assert max(labels.count(c) for c in set(labels)) == min(labels.count(c) for c in set(labels))
    # texture test patches come from the right 40 % of each photograph, training patches from the left 60 %

    train, _ = real_tasks.texture_patches(50, "train", seed=0)
    test, _ = real_tasks.texture_patches(50, "test", seed=1)
    assert not {p.tobytes() for p in train} & {p.tobytes() for p in test}


def test_accuracy_quick_runs_the_protocol_end_to_end(accuracy, tmp_path):
    result = accuracy.main(["--quick", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"),
                            "--tasks", "faces", "textures", "--methods", "linear", "vqt-q1", "--grid-chunk", "1"])
    assert [r["task"] for r in result["rows"]] == ["faces", "textures"]
    run_config = (tmp_path / "out" / "runs" / "vqt-q1" / "config.yaml").read_text()
    assert "grid_chunk: 1\n" in run_config  # one configuration per unit: processes with this command share it
    for row in result["rows"]:
        assert set(row["methods"]) == {"linear", "vqt-q1", "vqt-q1-compressed"}
        assert set(row["paired"]) == {"vqt-q1 - linear"}
        assert all(len(m["seeds"]) == 2 for m in row["methods"].values())
    assert (tmp_path / "out" / "accuracy.md").read_text().count("| faces |") == 2  # table and paired row
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "out" / "accuracy.md").read_text().startswith("# Accuracy on real photographs (")


def test_accuracy_title_says_when_tasks_are_synthetic(accuracy):
    result = {"rows": [{"task": "dsprites_loc", "test_images": 4, "methods": {}, "paired": {}}], "seeds": 2,
              "synthetic_tasks": ["dsprites_loc"], "backbone": "b", "img_size": 32, "command": "c", "date": "d",
              "machine": "m", "epochs": 1, "batch_size": 2, "lrs": None, "wds": None, "total_seconds": 1.0,
              "seconds": {}}
    assert accuracy.markdown(result).startswith("# Accuracy on built-in synthetic structured tasks (dsprites_loc)")
    result["rows"].append({"task": "digits", "test_images": 4, "methods": {}, "paired": {}})
    assert accuracy.markdown(result).startswith("# Accuracy on real photographs and built-in synthetic tasks (dspr")


def test_memory_budget_gives_store_methods_their_whole_lr_grid(tmp_path):
    """The first real run gave every method two lrs, which for VQT were its grid's two highest (1, 0.25): VQT lost
    8 points to that. The store methods (seconds each) try their whole grid; the online ones --lrs-per-method."""
    memory_budget = load("memory_budget")
    args = memory_budget.argparse.Namespace(
        backbone="b", img_size=56, root=tmp_path, task="digits", epochs=10, warmup_epochs=1, batch_size=64, seeds=2,
        lrs_per_method=2)
    variants = {name: (method, tuned, lrs) for name, method, tuned, lrs in memory_budget.VARIANTS}
    for name in ("linear", "head2toe", "vqt"):
        config = memory_budget.sweep_config(args, *variants[name], tmp_path / name)
        assert config["lrs"] == [1.0, 0.25, 0.05, 0.01] and config["test_store"]
    for name in ("vpt-deep-1", "adaptformer", "vqt+adaptformer", "finetune-2"):
        method, tuned, lrs = variants[name]
        config = memory_budget.sweep_config(args, method, tuned, lrs, tmp_path / name)
        assert config["lrs"] == list(lrs[:2]) and "test_store" not in config and config["tuned_layers"] == tuned
    assert memory_budget.sweep_config(args, *variants["vqt+adaptformer"], tmp_path / "c")["queries"] == 1
    assert variants["vpt-deep"][2][:2] == (0.01, 0.002)  # 0.25 and 0.05 diverged (train loss 23)


def test_accuracy_table_names_each_runs_own_grid_and_refuses_other_budgets(accuracy, tmp_path):
    def run(name: str, **changes) -> Path:
        config = {"backbone": "b", "img_size": 224, "epochs": 100, "warmup_epochs": 10, "batch_size": 128,
                  "store_dtype": "float16", "transform": "backbone", "data_root": "/r", "lrs": [1.0, 0.25],
                  "wds": [0.0]}
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**config, **changes}))
        return tmp_path / name

    runs = {"linear": run("linear", lrs=[1.0, 0.5], wds=[0.01, 0.0]), "vqt-q1": run("vqt")}
    configs = accuracy.run_configs(runs)
    result = {"grids": {k: {"lrs": c["lrs"], "wds": c["wds"]} for k, c in configs.items()}}
    assert accuracy.grid_text(result) == ("grids per method: linear lrs [1.0, 0.5] x wds [0.01, 0.0]; "
                                          "vqt-q1 lrs [1.0, 0.25] x wds [0.0]")
    result["grids"]["linear"] = result["grids"]["vqt-q1"]
    assert accuracy.grid_text(result) == "grid lrs [1.0, 0.25] x wds [0.0]"
    runs["head2toe"] = run("h2t", epochs=20)
    with pytest.raises(SystemExit, match="differ in epochs"):
        accuracy.run_configs(runs)


def test_compression_schedule_retrains_what_the_sweep_recorded(accuracy, tmp_path):
    """On a run made with today's code, the scheduled column (vqt.protocol.compress) must equal the sweep's record."""
    root, out = tmp_path / "root", tmp_path / "out"
    accuracy.main(["--quick", "--root", str(root), "--out", str(out), "--tasks", "faces", "--methods", "head2toe"])
    text = load("compression_schedule").main(["--root", str(root), "--run", f"faces={out / 'runs' / 'head2toe'}",
                                              "--out", str(tmp_path / "schedule.md")])
    row = next(line for line in text.splitlines() if line.startswith("| faces |"))
    recorded, constant, schedule = [cell.strip() for cell in row.strip("|").split("|")][3:]
    assert recorded == schedule and "±" in constant
