"""The VTAB-1k registry holds the protocol's facts; names resolve or fail with a suggestion."""

from __future__ import annotations

from collections import Counter

import pytest

from vqt.data.registry import TASKS, get_task, resolve_tasks, tasks_in_group
from vqt.errors import DataError


def test_registry_facts() -> None:
    assert len(TASKS) == 19
    assert Counter(task.group for task in TASKS.values()) == {"Natural": 7, "Specialized": 4, "Structured": 8}
    assert Counter(task.queries for task in TASKS.values()) == {1: 12, 10: 2, 20: 5}
    assert {name for name, task in TASKS.items() if task.queries == 10} == {"smallnorb_ele", "clevr_dist"}
    assert get_task("sun397").compress and not get_task("svhn").compress
    assert get_task("cifar100").folder == "cifar" and get_task("cifar").name == "cifar100"
    assert (
        sum(task.num_classes for task in TASKS.values())
        == 102 + 100 + 47 + 102 + 37 + 10 + 397 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16 + 16 + 18 + 9
    )


def test_resolve_tasks() -> None:
    assert resolve_tasks("all") == list(TASKS)
    assert resolve_tasks("Specialized") == ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
    assert resolve_tasks("dtd, structured,clevr-count") == ["dtd", *tasks_in_group("structured")]
    assert resolve_tasks("pets,Flowers102") == ["oxford_iiit_pet", "oxford_flowers102"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("dsprite_loc", "did you mean 'dsprites_loc'"), ("imagenet", "known tasks"), (" , ", "no task given")],
)
def test_unknown_names(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        resolve_tasks(spec)
