"""Every backbone dtype a user can hand in trains and predicts (float64, float32, bf16, fp16), with the head and the
loss in the master dtype; float64 equals a float64 reference loop; under bf16 autocast the query path computes from
low-precision block copies made once, so no frozen weight is recast or saved for backward per step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tests.helpers import reference_tokens, relative_difference, vqt_reference
from tests.tiny_models import tiny_vit
from vqt.backbone.query_path import compute_block, compute_copies
from vqt.bench.memory import SavedActivations
from vqt.features import extract_features
from vqt.methods.vqt import VQT
from vqt.training import Recipe, grid_configs, seed_init, train_cached, train_grid, train_online
from vqt.training.evaluate import evaluate_streaming

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Recipe(lr=2.0, weight_decay=0.02, batch_size=8, epochs=3, warmup_epochs=1, seed=4)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
MASTER = {torch.float64: torch.float64}  # every other backbone dtype trains fp32 master parameters


def data(dtype: torch.dtype, count: int = 20) -> TensorDataset:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(count, 3, 32, 32, generator=generator).to(dtype)
    return TensorDataset(images, torch.randint(0, 4, (count,), generator=generator))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_backbone_dtype_trains_online_from_stores_and_predicts(dtype: torch.dtype, tmp_path) -> None:
    backbone = tiny_vit("dinov2_ls_reg", dtype=dtype)
    dataset = data(torch.float32)
    master = MASTER.get(dtype, torch.float32)
    model = seed_init(VQT(backbone, 4, num_queries=2), 0)
    assert all(p.dtype == master for p in model.trainable_parameters())
    online = train_online(model, dataset, RECIPE)
    store = extract_features(backbone, dataset, tmp_path / "s", backbone_spec="tiny@random",
                             transform={"none": True}, dataset_meta={"name": "d"}, dtype="float32",
                             batch_size=8, progress=False)
    cached = train_cached(seed_init(VQT(backbone, 4, num_queries=2), 0), store, RECIPE, val_store=store)
    grid = train_grid(VQT(backbone, 4, num_queries=2), store, grid_configs([1.0, 0.5], [0.0]), RECIPE,
                      val_store=store)
    for history in [online, cached, *grid.histories]:
        assert all(math.isfinite(loss) for loss in history.train_loss), history.train_loss
    logits = model.eval()(dataset.tensors[0][:4])
    assert logits.dtype == master and torch.isfinite(logits).all()
    assert 0.0 <= evaluate_streaming([model, grid.model(0)], dataset).accuracies[1] <= 1.0


def test_float64_training_matches_a_float64_reference_loop(tmp_path) -> None:
    """float64 end to end: online training on the tapped tokens and store training on a float32 store's tokens
    equal the reference loop (torch.optim.Adam, masked-concatenation block) in float64 to 1e-9."""
    backbone = tiny_vit("dinov2_ls_reg", dtype=torch.float64)
    dataset = data(torch.float64, count=28)
    images, labels = dataset.tensors
    recipe = RECIPE
    new = lambda: seed_init(VQT(backbone, 4, num_queries=2, query_dropout=0.0), recipe.seed)  # noqa: E731

    model = new()
    train_online(model, dataset, recipe)
    tokens, pre_logits = reference_tokens(backbone, images)
    expected = vqt_reference(new(), tokens, pre_logits, labels, recipe.lr, recipe.weight_decay, recipe)
    assert relative_difference(model.trainable_parameters(), [t.double() for t in expected]) <= 1e-9

    store = extract_features(backbone, dataset, tmp_path / "s", backbone_spec="tiny@random",
                             transform={"none": True}, dataset_meta={"name": "d"}, dtype="float32",
                             batch_size=16, progress=False)
    cached = new()
    train_cached(cached, store, recipe)
    rounded = [t.float().double() for t in tokens]
    expected = vqt_reference(new(), rounded, pre_logits.float().double(), labels, recipe.lr,
                             recipe.weight_decay, recipe)
    assert relative_difference(cached.trainable_parameters(), expected) <= 1e-9


def saved_step(model: VQT, precision: str, batch: int = 8) -> SavedActivations:
    images, labels = torch.randn(batch, 3, 32, 32), torch.zeros(batch, dtype=torch.long)
    with SavedActivations([model]) as saved:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            features = model.features(images)  # as the trainers run it: the head (fp32) outside autocast
        loss = F.cross_entropy(model.head(features), labels)
    loss.backward()
    return saved


@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg", "qknorm_scalenorm_gate"])
def test_bf16_step_saves_no_weight_casts_and_about_half_the_fp32_bytes(family: str) -> None:
    """Per step, weights included: bf16 saves <= 0.6x the fp32 bytes, none of them a cast of a frozen weight
    (the copies are made once: the second step makes none)."""
    model = VQT(tiny_vit(family), 4, num_queries=2).train()
    fp32 = saved_step(model, "fp32")
    first = saved_step(model, "bf16")
    copies = [id(block) for block in compute_copies(model)]
    second = saved_step(model, "bf16")
    assert copies and [id(block) for block in compute_copies(model)] == copies  # reused, not remade
    assert second.bytes <= 0.6 * fp32.bytes, (second.bytes, fp32.bytes)
    assert first.bytes == second.bytes
    frozen = sum(p.numel() for p in model.backbone.blocks.parameters())
    queries = sum(q.numel() for q in model.queries)
    assert second.cast_bytes <= 2 * queries  # only the trainable queries' own bf16 casts
    assert second.persistent_bytes >= 2 * frozen  # the bf16 copies of every block's weights


def test_block_copy_follows_the_blocks_weights() -> None:
    """A copy is rebuilt when the block's weights change (load_state_dict), so it never computes stale weights."""
    backbone = tiny_vit("plain_cls")
    block = backbone.blocks[0]
    first = compute_block(block, torch.bfloat16)
    assert compute_block(block, torch.bfloat16) is first and first.norm1.weight.dtype == torch.bfloat16
    changed = copy.deepcopy(block.state_dict())
    changed["mlp.fc1.weight"] += 1.0
    block.load_state_dict(changed)
    second = compute_block(block, torch.bfloat16)
    assert second is not first
    assert torch.equal(second.mlp.fc1.weight, block.mlp.fc1.weight.to(torch.bfloat16))
    block.attn.qkv.weight.requires_grad_(True)  # a trainable block (LoRA, fine-tuning) is never copied
    assert compute_block(block, torch.bfloat16) is block
