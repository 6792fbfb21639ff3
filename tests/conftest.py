"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Tiny tensors: OpenMP barriers on a shared, oversubscribed machine cost more than the maths (up to 100x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """dsprites_ori and clevr_count, tiny (16/8/16 images at 32 px): the setting of most command-line tests."""
    from tests.helpers import synth  # here, not at the top: conftest must import without the package under test

    root = tmp_path_factory.mktemp("vtab")
    synth(root, "dsprites_ori,clevr_count")
    return root


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """dsprites_ori, and `my_shapes`: a user's own task (a copy under a name outside the VTAB-1k registry)."""
    import shutil

    from tests.helpers import synth

    root = tmp_path_factory.mktemp("vtab")
    synth(root, "dsprites_ori")
    shutil.copytree(root / "dsprites_ori", root / "my_shapes")
    return root
