"""`vqt.distributed.context` in one process: outside torchrun nothing changes; settings and refusals are one line.

The multi-process behaviour is in test_distributed_extract.py (gloo, spawned ranks) and
test_distributed_launch.py (real torchrun).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqt.cli.main import main
from vqt.distributed import context, launched_by_torchrun
from vqt.distributed.shards import contiguous_shard
from vqt.errors import VQTError


@pytest.fixture
def no_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_outside_torchrun_nothing_changes(no_launch, capsys) -> None:
    assert not launched_by_torchrun()
    ctx = context.init_from_env("auto")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.distributed) == (0, 1, None, True, False)
    assert not torch.distributed.is_initialized()
    context.barrier("nothing")  # no-ops
    assert context.all_gather_object(7, "x") == [7] and context.broadcast_object(8, "x") == 8
    context.check_same_arguments(["a"])
    assert context.progress_enabled(True) and not context.progress_enabled(False)
    context.main_print("shown")
    assert capsys.readouterr().out == "shown\n"
    assert context.log_prefix() == ""
    assert context.rank_device("cpu") == torch.device("cpu")


def test_launch_variables_are_all_three(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launched_by_torchrun()


@pytest.mark.parametrize("value, ok", [("", True), ("12.5", True), ("abc", False), ("0", False), ("-3", False)])
def test_timeout_setting(monkeypatch, value: str, ok: bool) -> None:
    monkeypatch.setenv(context.TIMEOUT_ENV, value)
    if ok:
        assert context.timeout_seconds() == (float(value) if value else context.DEFAULT_TIMEOUT_S)
    else:
        with pytest.raises(context.DistributedError, match=context.TIMEOUT_ENV):
            context.timeout_seconds()


def test_rank_device_under_a_launch(monkeypatch) -> None:
    """Ranks get their own GPU for auto/cuda; an explicit cuda:N (the same GPU on every rank) is refused."""
    fake = context.DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1), backend="nccl")
    monkeypatch.setattr(context, "_current", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert context.rank_device("auto") == torch.device("cuda", 1)
    assert context.rank_device("cuda") == torch.device("cuda", 1)
    assert context.rank_device("cpu") == torch.device("cpu")
    with pytest.raises(context.DistributedError, match="--device cuda:0 under torchrun"):
        context.rank_device("cuda:0")
    assert context.log_prefix() == "[rank 1/2] "
    assert not context.progress_enabled(True)
    monkeypatch.setattr(context, "_current", dataclasses.replace(fake, rank=0))
    assert context.progress_enabled(True)


def test_more_ranks_than_gpus_refused(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(context.DistributedError, match="LOCAL_RANK 3 but this node has 2 CUDA device"):
        context.init_from_env("auto")
    assert context.current().backend is None


def test_a_bad_launch_is_one_line_at_the_command_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "x")
    assert main(["info", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "vqt: error: environment variable LOCAL_RANK='x' is not an integer\n"
    assert isinstance(context.DistributedError("x"), VQTError)


@pytest.mark.parametrize("count, unit, world", [(20, 8, 2), (20, 4, 3), (3, 8, 2), (0, 4, 2), (100, 8, 7), (17, 1, 5)])
def test_shards_are_contiguous_whole_units_covering_everything_once(count: int, unit: int, world: int) -> None:
    shards = [contiguous_shard(count, unit, rank, world) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(count))
    for shard in shards:
        assert shard.start % unit == 0 and (shard.stop % unit == 0 or shard.stop == count)
    sizes = [-(-len(shard) // unit) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
