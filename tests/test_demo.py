"""`vqt demo` end to end on a tiny budget (the real one takes ~9 minutes; docs/demo.md has its measured run)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vqt import demo
from vqt.cli.main import main


def test_demo_writes_table_plot_and_summary(tmp_path: Path, monkeypatch) -> None:
    tiny = dataclasses.replace(demo.REDUCED, tasks=("dsprites_loc",), img_size=32, n_train=16, n_val=8, n_test=16,
                               lrs=(0.1,), wds=(0.0,), epochs=2, warmup_epochs=1, memory_batch=2)
    monkeypatch.setattr(demo, "REDUCED", tiny)
    monkeypatch.setattr(demo, "MEMORY_ONLY", ("vqt-concat",))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--backbone", "vit_tiny_patch16_224@random", "--no-progress"]
    assert main(args) == 0
    table = (out / "results.md").read_text()
    assert (out / "accuracy_vs_memory.png").stat().st_size > 1000
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"linear", "head2toe", "vqt", "vqt-concat (memory only)"} <= set(rows)
    # The table's accuracies are the sweeps' own numbers.
    for method in ("linear", "head2toe", "vqt"):
        summary = json.loads((out / "runs" / method / "summary.json").read_text())
        accuracy = summary["rows"][0]["test_mean"]
        assert f"| {accuracy:.1f} |" in rows[method]
    # A second run reuses the finished sweeps and stores (no refusal, same accuracies, sweeps untouched).
    before = (out / "runs" / "vqt" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "runs" / "vqt" / "summary.json").stat().st_mtime_ns == before
    again = {line.split("|")[1].strip(): line for line in (out / "results.md").read_text().splitlines()
             if line.startswith("| ")}
    for method in ("linear", "head2toe", "vqt"):
        assert again[method].split("|")[2:4] == rows[method].split("|")[2:4]
