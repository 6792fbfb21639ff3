"""DDP for the methods that train from images: 2 gloo ranks on the CPU follow the 1-process run.

Tiny random ViT (32 px), dropout off, 17 training images in batches of 8 (the last batch has 1 image, so one
rank's slice is empty) and 7 validation images (uneven shards), 3 epochs. Per-epoch losses, validation accuracies
and final trainable parameters are compared with the 1-process run. Measured (max |difference| over the 3 epochs /
the parameters): finetune loss 2.0e-7, parameters 8.4e-6 (Adam divides by the root of tiny second moments, which
magnifies the rounding of near-zero gradients; the parameters moved by ~1e-2); LoRA 6.2e-7 / 3.7e-8; VQT 1.8e-7 /
1.2e-7. Tolerances: losses 1e-5, parameters 5e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from tests.tiny_models import tiny_vit
from vqt.distributed.shards import per_rank_batch, rank_slice, shard
from vqt.errors import VQTError
from vqt.methods.registry import get_method
from vqt.protocol.fitting import build_model, fit_online, make_recipe

METHODS = ("finetune", "lora", "vqt")
LOSS_TOLERANCE = 1e-5
PARAM_TOLERANCE = 5e-5


class Recorded(TensorDataset):
    """Images with labels that remember which indices this process read (each rank must read only its slices)."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        super().__init__(torch.randn(count, 3, 32, 32, generator=generator),
                         torch.randint(0, 4, (count,), generator=generator))
        self.read: list[int] = []

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        self.read.append(index)
        return super().__getitem__(index)


def train(method: str, distributed: bool | None, batch_size: int = 8) -> dict:
    backbone = tiny_vit()
    kwargs = get_method(method).kwargs(queries=2, query_dropout=0.0)
    model = build_model(method, backbone, 4, kwargs, seed=3)
    recipe = make_recipe(lr=0.05, weight_decay=1e-3, batch_size=batch_size, epochs=3, warmup_epochs=1, eval_every=1,
                         data_seed=5, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        images = Recorded(17, 0)
        history = fit_online(model, images, recipe, val_dataset=Recorded(7, 1), distributed=distributed)
    return {"loss": history.train_loss, "val": history.val_accuracy, "read": len(images.read),
            "params": {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}}


def ranks(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        results = {method: train(method, None) for method in METHODS}
        try:
            train("finetune", None, batch_size=7)
            results["refused"] = None
        except VQTError as error:
            results["refused"] = str(error)
        torch.save(results, f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(ranks, args=(2, str(folder / "rendezvous"), str(folder / "out")), nprocs=2, join=True)
    return [torch.load(folder / f"out.rank{rank}") for rank in range(2)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_follow_the_one_process_run(two_ranks: list[dict], method: str) -> None:
    alone = train(method, None)
    for rank, results in enumerate(two_ranks):
        ddp = results[method]
        assert len(ddp["loss"]) == len(alone["loss"]) == 3
        loss_error = max(abs(a - b) for a, b in zip(ddp["loss"], alone["loss"], strict=True))
        param_error = max(float((ddp["params"][k] - alone["params"][k]).abs().max()) for k in alone["params"])
        print(f"{method} rank {rank}: loss max |diff| {loss_error:.2e}, parameter max |diff| {param_error:.2e}")
        assert loss_error <= LOSS_TOLERANCE, (ddp["loss"], alone["loss"])
        assert param_error <= PARAM_TOLERANCE
        assert ddp["val"] == alone["val"]  # sharded evaluation, counts all-reduced
        assert ddp["params"].keys() == alone["params"].keys()
        # 3 epochs of batches 8, 8, 1: rank 0 reads 4 + 4 + 1, rank 1 reads 4 + 4 + a stand-in for its empty slice
        assert (alone["read"], ddp["read"]) == (3 * 17, 3 * 9)
    moved = max(float((alone["params"][k] - train(method, None)["params"][k]).abs().max()) for k in alone["params"])
    assert moved == 0.0  # the reference itself is deterministic, so the comparison means something


def test_a_batch_the_world_size_does_not_divide_is_refused(two_ranks: list[dict]) -> None:
    for results in two_ranks:
        assert results["refused"] is not None and "--batch-size 7 does not divide over 2 ranks" in results["refused"]
    with pytest.raises(VQTError, match="does not divide over 4 ranks"):
        per_rank_batch(10, 4)
    assert per_rank_batch(8, 4) == 2


def test_slices_and_shards_cover_everything_once() -> None:
    import numpy as np

    batch = np.array([5, 3, 9, 1, 7])
    assert np.concatenate([rank_slice(batch, r, 2) for r in range(2)]).tolist() == batch.tolist()
    assert [len(rank_slice(batch, r, 2)) for r in range(2)] == [3, 2]
    assert [list(shard(7, r, 3)) for r in range(3)] == [[0, 1], [2, 3, 4], [5, 6]]
