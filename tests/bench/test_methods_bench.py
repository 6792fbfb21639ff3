"""`vqt bench memory` pieces: one method measured in-process, the table, the accuracies file and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from vqt.bench.methods import load_accuracies, markdown_table, measure_method, scatter_plot
from vqt.cli.main import build_parser


def test_measure_table_and_plot(tmp_path: Path) -> None:
    rows = [measure_method(m, "vit_tiny_patch16_224@random", 2, 32, 1, "cpu", 5) for m in ("linear", "vqt+lora")]
    linear, combo = rows
    assert linear["store_trainable"] and not combo["store_trainable"]
    assert combo["trainable_params"] > linear["trainable_params"] > 0
    assert combo["saved_mib_per_sample"] > linear["saved_mib_per_sample"] > 0
    assert all(r["peak_mib"] > 0 and r["step_s"] > 0 and r["timed_steps"] == 1 for r in rows)
    table = markdown_table(rows + [{"method": "broken", "error": "boom"}], "cpu")
    assert table.count("\n") == 4 and "| vqt+lora |" in table and "failed: boom" in table

    (tmp_path / "acc.json").write_text(json.dumps([{"method": "linear", "accuracy": 0.5},
                                                   {"method": "linear", "accuracy": 0.7}, {"method": "vqt+lora",
                                                                                            "accuracy": 0.9}]))
    (tmp_path / "acc.csv").write_text("method,accuracy\nlinear,0.6\n")
    assert load_accuracies(tmp_path / "acc.json") == {"linear": 0.6, "vqt+lora": 0.9}
    assert load_accuracies(tmp_path / "acc.csv") == {"linear": 0.6}
    plot = tmp_path / "plot.png"
    assert scatter_plot(rows, {"linear": 0.6, "vqt+lora": 0.9}, plot, "test") == 2 and plot.stat().st_size > 0


def test_cli_parses_bench_memory() -> None:
    args = build_parser().parse_args(["bench", "memory", "--methods", "linear", "vqt", "--batch", "4"])
    assert args.methods == ["linear", "vqt"] and args.batch == 4 and args.func.__name__ == "run_memory"
