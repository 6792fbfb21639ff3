"""Sharded extraction under a real 2-process gloo group on CPU: the store equals the single-process one bit for bit,
a killed run resumes with each rank finding its finished chunks, a rank that fails stops every rank with its message.

One spawn of two processes runs every phase (starting processes that import torch is the slow part).
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import COUNT, CountingDataset, extract
from tests.tiny_models import tiny_vit
from vqt.distributed.shards import contiguous_shard
from vqt.errors import StoreError
from vqt.features import open_store
from vqt.features.store import PROGRESS_FILE, rank_progress_file

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for a rank on one node."""
    return dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))


class Interrupt(Exception):
    pass


class Crashing(CountingDataset):
    def __getitem__(self, index: int):
        if index == 13:
            raise RuntimeError("disk gone at image 13")
        return super().__getitem__(index)


def _phases(rank: int, root: Path) -> dict:
    from vqt.distributed import context

    context.init_from_env("cpu")
    backbone, seen = tiny_vit("plain_cls"), {}

    dataset = CountingDataset()
    extract(backbone, dataset, root / "two", shard=True)
    seen["reads_full"] = dataset.reads

    def stop_after_first_chunk(done: int) -> None:
        raise Interrupt(f"rank {rank} stopped at {done}")

    try:
        extract(backbone, CountingDataset(), root / "killed", on_chunk=stop_after_first_chunk, shard=True)
    except Interrupt as error:
        seen["killed"] = str(error)
    seen["progress_after_kill"] = json.loads((root / "killed" / rank_progress_file(rank)).read_text())
    context.barrier("the test's look at the killed store")
    resumed = CountingDataset()
    extract(backbone, resumed, root / "killed", shard=True)
    seen["reads_resumed"] = resumed.reads

    try:
        extract(backbone, Crashing(), root / "crashed", shard=True)
    except Exception as error:  # noqa: BLE001 - reported to the test
        seen["crashed"] = f"{type(error).__name__}: {error}"

    if rank == 1:  # shard=False: one rank alone, no collective (the others are elsewhere)
        extract(backbone, CountingDataset(), root / "alone")
    context.barrier("rank 1's own store")

    from vqt.protocol.stores import _on_rank_0

    calls = []

    def job():
        calls.append(rank)
        return extract(backbone, CountingDataset(), root / "by_rank_0")

    seen["on_rank_0"] = [str(_on_rank_0(job, True, "the test's store").path), calls]

    def refused():
        raise StoreError("made for another request")

    try:
        _on_rank_0(refused, True, "the test's refusal")
    except StoreError as error:
        seen["refused"] = str(error)
    context.shutdown()
    return seen


def worker(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(launch_env(rank, world_size, port))
    torch.set_num_threads(1)
    try:
        seen = _phases(rank, Path(root))
    except BaseException:  # noqa: BLE001 - the test reads it
        seen = {"error": traceback.format_exc()}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("dist")
    os.environ["VQT_DIST_TIMEOUT"] = "60"  # the spawned ranks inherit it: a bug fails the test, never hangs it
    try:
        mp.spawn(worker, args=(2, free_port(), str(root)), nprocs=2, join=True)
    finally:
        del os.environ["VQT_DIST_TIMEOUT"]
    seen = [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, record in enumerate(seen):
        assert "error" not in record, f"rank {rank}: {record.get('error')}"
    return root, seen


def test_two_ranks_store_equals_single_process_bit_for_bit(two_ranks, tmp_path: Path) -> None:
    root, seen = two_ranks
    reference = extract(tiny_vit("plain_cls"), CountingDataset(), tmp_path / "one")
    store = open_store(root / "two", expect={"shapes": reference.meta["shapes"]})
    assert store.meta == reference.meta
    for name in ("tokens", "pre_logits", "labels"):
        assert getattr(store, name).tobytes() == getattr(reference, name).tobytes(), name
    for file in ("tokens.npy", "pre_logits.npy", "labels.npy", "meta.json", "COMPLETE"):
        assert (root / "two" / file).read_bytes() == (tmp_path / "one" / file).read_bytes(), file
    # Each rank read exactly its shard of whole chunks (batch 4, chunk 8: [0, 8) and [8, 20)).
    assert [record["reads_full"] for record in seen] == [len(contiguous_shard(COUNT, 8, r, 2)) for r in (0, 1)]
    assert (sorted(path.name for path in (root / "two").iterdir())
            == sorted(path.name for path in (tmp_path / "one").iterdir()))


def test_killed_two_rank_extraction_resumes_each_rank_from_its_chunks(two_ranks, tmp_path: Path) -> None:
    root, seen = two_ranks
    assert [record["killed"] for record in seen] == ["rank 0 stopped at 8", "rank 1 stopped at 16"]
    assert [record["progress_after_kill"] for record in seen] == [{"start": 0, "done": 8}, {"start": 8, "done": 16}]
    # Rank 0's shard was finished; rank 1 redid only the images after its first chunk.
    assert [record["reads_resumed"] for record in seen] == [0, COUNT - 16]
    reference = extract(tiny_vit("plain_cls"), CountingDataset(), tmp_path / "one")
    resumed = open_store(root / "killed")
    assert resumed.tokens.tobytes() == reference.tokens.tobytes()
    assert resumed.pre_logits.tobytes() == reference.pre_logits.tobytes()
    assert resumed.labels.tolist() == reference.labels.tolist()
    assert json.loads((root / "killed" / PROGRESS_FILE).read_text()) == {"done": COUNT}
    assert not list((root / "killed").glob("progress.rank*.json"))


def test_a_failing_rank_stops_every_rank_with_its_message(two_ranks) -> None:
    root, seen = two_ranks
    assert seen[1]["crashed"] == "RuntimeError: disk gone at image 13"
    assert seen[0]["crashed"].startswith("DistributedError: rank 1 failed extracting")
    assert "disk gone at image 13" in seen[0]["crashed"]
    with pytest.raises(StoreError, match="incomplete"):
        open_store(root / "crashed")


def test_single_process_resumes_a_killed_two_rank_store(two_ranks, tmp_path: Path) -> None:
    """A store left by 2 ranks (rank 1's chunk [8, 16) written, [0, 8) too) is resumed by one process."""
    root, _ = two_ranks
    import shutil

    shutil.copytree(root / "crashed", tmp_path / "s")  # rank 0 wrote [0, 8); rank 1 crashed before a commit
    dataset = CountingDataset()
    store = extract(tiny_vit("plain_cls"), dataset, tmp_path / "s")
    assert dataset.reads == COUNT - 8
    reference = extract(tiny_vit("plain_cls"), CountingDataset(), tmp_path / "one")
    assert np.array_equal(store.tokens, reference.tokens)


def test_unsharded_calls_and_rank_0_jobs(two_ranks, tmp_path: Path) -> None:
    root, seen = two_ranks
    reference = extract(tiny_vit("plain_cls"), CountingDataset(), tmp_path / "one")
    assert open_store(root / "alone").tokens.tobytes() == reference.tokens.tobytes()
    assert [record["on_rank_0"] for record in seen] == [[str(root / "by_rank_0"), [0]], [str(root / "by_rank_0"), []]]
    assert seen[0]["refused"] == "made for another request"
    assert seen[1]["refused"] == "rank 0 failed in the test's refusal: made for another request"
