"""The backbone adds nothing to what autograd saves: VQT keeps about one X_l per layer, the concat way far more."""

from __future__ import annotations

import torch

from tests.tiny_models import tiny_vit
from vqt.bench.memory import SavedActivations
from vqt.methods.vqt import VQT
from vqt.methods.vqt_concat import ConcatVQT

BATCH = 4


def saved_bytes(model: VQT, images: torch.Tensor) -> int:
    with SavedActivations([model]) as saved:
        loss = model(images).logsumexp(-1).sum()
    loss.backward()
    return saved.bytes


def test_backbone_pass_saves_nothing() -> None:
    model = VQT(tiny_vit("dinov2_ls_reg"), num_classes=5).train()
    with SavedActivations([model]) as saved:
        tapped = model.tap(torch.randn(BATCH, 3, 32, 32))
    assert saved.bytes == 0
    assert not any(t.requires_grad for t in tapped.tokens)


def test_saved_activations_bounded_by_tokens_not_ops() -> None:
    backbone = tiny_vit("dinov2_ls_reg")
    backbone.set_input_size(img_size=64)  # 64 patches + 3 prefix tokens: N >> Q, as in real use
    images = torch.randn(BATCH, 3, 64, 64)
    ours = VQT(backbone, num_classes=5).train()
    concat = ConcatVQT(backbone, num_classes=5).train()
    concat.load_state_dict(ours.state_dict())

    tokens_bytes = sum(t.numel() * t.element_size() for t in ours.tap(images).tokens)  # sum_l |X_l|
    ours_bytes = saved_bytes(ours, images)
    concat_bytes = saved_bytes(concat, images)
    # Ours: X_l once per layer plus small per-query tensors (attention weights, the query's MLP).
    assert tokens_bytes <= ours_bytes <= 1.25 * tokens_bytes
    # The concat implementation records every op of every block for all tokens.
    assert concat_bytes >= 8 * ours_bytes
    # Both still train the same parameters with the same gradients: compare them with query dropout off (the two
    # models would draw different masks), on the same weights and images.
    for model in (ours, concat):
        model.query_dropout.p = 0.0
        model.zero_grad(set_to_none=True)
        saved_bytes(model, images)
    assert_same_gradients(ours, concat)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


GRADIENT_TOLERANCE = 1e-5  # relative (Frobenius) per parameter; seen <= 5e-7 (fp32 rounding, other op order)


def assert_same_gradients(ours: VQT, concat: ConcatVQT) -> None:
    """Every query and head parameter gets the same, nonzero gradient from both implementations.

    Catches a VQT or ConcatVQT whose forward is right but whose backward is not (e.g. a detached or rescaled
    residual, a query path whose gradient skips the attention or the MLP branch).
    """
    pairs = list(zip(ours.trainable_parameters(), concat.trainable_parameters(), strict=True))
    assert len(pairs) == len(ours.queries) + 2  # queries of every layer, head weight and bias
    for index, (a, b) in enumerate(pairs):
        assert a.grad is not None and b.grad is not None, index
        assert b.grad.abs().max() > 0, index
        assert relative_error(a.grad, b.grad) <= GRADIENT_TOLERANCE, (index, relative_error(a.grad, b.grad))


def test_concat_vqt_gradients_match_vqt() -> None:
    """Same gradients of a real training loss (cross-entropy), Q=2, LayerScale and registers, dropout off."""
    backbone = tiny_vit("dinov2_ls_reg")
    ours = VQT(backbone, num_classes=5, num_queries=2, query_dropout=0.0).train()
    concat = ConcatVQT(backbone, num_classes=5, num_queries=2, query_dropout=0.0).train()
    concat.load_state_dict(ours.state_dict())
    images, labels = torch.randn(BATCH, 3, 32, 32), torch.tensor([0, 3, 1, 4])
    for model in (ours, concat):
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert_same_gradients(ours, concat)


def test_concat_vqt_matches_vqt() -> None:
    backbone = tiny_vit("clip_norm_pre")
    ours = VQT(backbone, num_classes=5, num_queries=2).eval()
    concat = ConcatVQT(backbone, num_classes=5, num_queries=2).eval()
    concat.load_state_dict(ours.state_dict())
    images = torch.randn(2, 3, 32, 32)
    assert (ours(images) - concat(images)).abs().max() <= 1e-4


def test_backbone_frozen_and_in_eval_while_training() -> None:
    backbone = tiny_vit("dinov2_ls_reg")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = VQT(backbone, num_classes=5).train()
    assert model.training and not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    model(torch.randn(BATCH, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_query_dropout_only_in_training() -> None:
    model = VQT(tiny_vit("plain_cls"), num_classes=5, query_dropout=0.5)
    images = torch.randn(BATCH, 3, 32, 32)
    model.eval()
    assert torch.equal(model.features(images), model.features(images))
    model.train()
    torch.manual_seed(0)
    first = model.features(images)
    torch.manual_seed(1)
    assert not torch.equal(first, model.features(images))
    # A fresh mask per image: two copies of one image get different features in training.
    twin = model.features(images[:1].expand(2, -1, -1, -1))
    assert not torch.equal(twin[0], twin[1])
