"""Embedding dropout as the official VQT code (andytu28/VQT, from VPT) applies it: after the position embedding,
in online training only."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import tiny_vit
from vqt.methods.vqt import VQT


def _vqt(embed_dropout: bool, backbone=None) -> VQT:
    torch.manual_seed(0)
    return VQT(backbone if backbone is not None else tiny_vit(), num_classes=3, query_dropout=0.0,
               embed_dropout=embed_dropout)


def _block0_input(model: VQT, images: torch.Tensor) -> torch.Tensor:
    """What block 0 receives during one tap pass: the embedded tokens (after any embedding dropout)."""
    seen: list[torch.Tensor] = []
    handle = model.backbone.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model.tap(images)
    finally:
        handle.remove()
    return seen[0]


def test_embed_dropout_applies_in_training_only(one_thread):
    images = torch.randn(2, 3, 32, 32)
    backbone = tiny_vit()
    plain = backbone(images)
    plain_pre = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
    model = _vqt(True, backbone)
    model.train()
    first, second = model.tap(images), model.tap(images)  # the tap runs under no_grad: dropout still applies
    assert not torch.equal(first.pre_logits, second.pre_logits)
    assert not torch.equal(first.tokens[0], second.tokens[0])
    assert not torch.equal(model(images), model(images))
    # the shared backbone is left as it was for its other users
    assert torch.equal(backbone(images), plain)
    assert not backbone.training and not backbone.pos_drop.training and backbone.pos_drop.p == 0.0
    # eval mode: exactly the plain model
    model.eval()
    tapped = model.tap(images)
    assert torch.equal(tapped.pre_logits, plain_pre)
    assert torch.equal(model(images), model(images))


def test_embed_dropout_is_the_official_rate_after_the_position_embedding(one_thread):
    images = torch.randn(8, 3, 32, 32)
    model = _vqt(True)
    backbone = model.backbone
    with torch.no_grad():
        embedded = backbone._pos_embed(backbone.patch_embed(images))  # patch + position embedding, CLS included
    model.eval()
    assert torch.equal(_block0_input(model, images), embedded)
    model.train()
    dropped = _block0_input(model, images)
    zeroed = dropped == 0
    assert abs(float(zeroed.float().mean()) - 0.1) < 0.02
    torch.testing.assert_close(dropped[~zeroed], embedded[~zeroed] / 0.9)


def test_without_embed_dropout_training_tap_equals_eval(one_thread):
    images = torch.randn(2, 3, 32, 32)
    model = _vqt(False)
    model.train()
    train_out = model.tap(images)
    model.eval()
    eval_out = model.tap(images)
    assert torch.equal(train_out.pre_logits, eval_out.pre_logits)
    assert all(torch.equal(a, b) for a, b in zip(train_out.tokens, eval_out.tokens, strict=True))


def test_embed_dropout_online_training_is_seeded_and_store_training_refused(one_thread):
    from torch.utils.data import TensorDataset

    from vqt.errors import VQTError
    from vqt.training.recipe import Recipe
    from vqt.training.trainers import train_cached, train_online

    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(6, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2]))
    recipe = Recipe(epochs=2, warmup_epochs=0, batch_size=3, lr=0.5, seed=3)
    trained = []
    for embed_dropout in (True, True, False):
        model = _vqt(embed_dropout, tiny_vit())
        train_online(model, data, recipe)
        trained.append(model.head.weight.detach().clone())
    assert torch.equal(trained[0], trained[1])  # reproducible: the masks come from the recipe's seed
    assert not torch.equal(trained[0], trained[2])  # and they do change training
    with pytest.raises(VQTError, match="online") as info:
        train_cached(_vqt(True), store=None)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    from vqt.training.grid import GridConfig, train_grid

    with pytest.raises(VQTError, match="online"):  # the grid trains from stores too
        train_grid(_vqt(True), store=None, configs=[GridConfig(0.1, 0.0)])  # type: ignore[arg-type]
