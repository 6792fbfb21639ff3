"""The results table: tasks outside VTAB-1k (group Other) get their own group mean and count in the overall mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import sweep_args
from vqt.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(*tasks: tuple[str, str, float | None]) -> list[dict]:
    from vqt.report import tables

    return [tables.task_row({"task": name, "group": group, "test_mean": mean, "test_std": 0.0, "status": "ok"})
            for name, group, mean in tasks]


def test_group_means_with_other_tasks() -> None:
    from vqt.report import tables

    vtab_only = tables.group_means(_rows(("dtd", "Natural", 0.8), ("dsprites_ori", "Structured", 0.4)))
    assert list(vtab_only) == ["Natural", "Specialized", "Structured", "Mean"]  # unchanged without Other tasks
    assert vtab_only["Mean"] == pytest.approx(60.0)

    rows = _rows(("dtd", "Natural", 0.8), ("svhn", "Natural", 0.6), ("dsprites_ori", "Structured", 0.4),
                 ("mine", "Other", 0.3), ("yours", "Other", None))
    means = tables.group_means(rows)
    assert list(means) == ["Natural", "Specialized", "Structured", "Mean", "Other", "Mean (all tasks)"]
    assert means["Natural"] == pytest.approx(70.0) and means["Structured"] == pytest.approx(40.0)
    assert means["Mean"] == pytest.approx(55.0)  # VTAB's: the mean of the group means, Other not in it
    assert means["Other"] == pytest.approx(30.0)
    assert means["Mean (all tasks)"] == pytest.approx((80 + 60 + 40 + 30) / 4)  # every task with a number

    only_other = tables.group_means(_rows(("mine", "Other", 0.3), ("yours", "Other", 0.5)))
    assert only_other["Mean"] is None and only_other["Other"] == pytest.approx(40.0)
    assert only_other["Mean (all tasks)"] == pytest.approx(40.0)

    text = tables.markdown(rows)
    assert "| Other | 30.00 |" in text and "| Mean (all tasks) | 52.50 |" in text and "| Mean | 55.00 |" in text
    csv_tasks = [line.split(",")[0] for line in tables.to_csv(rows).splitlines()[1:]]
    assert csv_tasks[-3:] == ["Mean", "Other", "Mean (all tasks)"]


def test_sweep_over_a_user_task_has_an_overall_mean(shapes_root: Path, tmp_path: Path, capsys) -> None:
    import csv

    out = tmp_path / "mixed"
    assert main(sweep_args(shapes_root, out, "dsprites_ori,my_shapes")) == 0
    assert "Mean (all tasks)" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [r["task"] for r in rows] == ["dsprites_ori", "my_shapes", "Natural", "Specialized", "Structured", "Mean",
                                         "Other", "Mean (all tasks)"]
    by_task = {r["task"]: r for r in rows}
    assert by_task["my_shapes"]["group"] == "Other"
    dsprites, mine = float(by_task["dsprites_ori"]["test_mean"]), float(by_task["my_shapes"]["test_mean"])
    assert float(by_task["Mean"]["test_mean"]) == pytest.approx(dsprites, abs=1e-3)  # VTAB: Structured only
    assert float(by_task["Other"]["test_mean"]) == pytest.approx(mine, abs=1e-3)
    assert float(by_task["Mean (all tasks)"]["test_mean"]) == pytest.approx((dsprites + mine) / 2, abs=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_means"]["Mean (all tasks)"] == pytest.approx((dsprites + mine) / 2, abs=1e-3)
    assert "| Mean (all tasks) |" in (out / "results.md").read_text()
