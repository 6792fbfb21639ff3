"""Exactness of the backbone tap and the query path against the plain masked-concatenation reference."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import FAMILIES, reference_vqt, tiny_vit
from vqt.backbone.query_path import query_block_output
from vqt.methods.vqt import VQT


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("num_queries", [1, 3])
def test_features_and_gradients_match_reference(family: str, num_queries: int) -> None:
    backbone = tiny_vit(family)
    model = VQT(backbone, num_classes=5, num_queries=num_queries).eval()
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    loss_weights = torch.randn(4, 5)

    ours = model.features(images)
    (model.head(ours) * loss_weights).sum().backward()
    grads_ours = [p.grad.clone() for p in model.trainable_parameters()]

    model.zero_grad()
    reference, _, _ = reference_vqt(backbone, list(model.queries), images)
    (model.head(reference) * loss_weights).sum().backward()
    grads_ref = [p.grad.clone() for p in model.trainable_parameters()]

    assert ours.shape == (4, 48 * (1 + 3 * num_queries))
    assert (ours - reference).abs().max() <= 1e-5
    assert len(grads_ours) == 3 + 2  # 3 layers of queries, head weight and bias
    for got, expected in zip(grads_ours, grads_ref, strict=True):
        assert expected.abs().max() > 0
        assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_backbone_output_bit_identical_with_queries_attached(family: str) -> None:
    backbone = tiny_vit(family)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain_final = backbone.forward_features(images)
        plain = backbone.forward_head(plain_final, pre_logits=True)
    model = VQT(backbone, num_classes=3, num_queries=2)
    tapped = model.tap(images)
    assert torch.equal(tapped.pre_logits, plain)
    # The masked reference too leaves the ordinary tokens untouched (its mask is right).
    _, ref_final, _ = reference_vqt(backbone, list(model.queries), images)
    assert (ref_final - plain_final).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg"])
def test_absorbed_and_recompute_forms_agree(family: str) -> None:
    backbone = tiny_vit(family, dtype=torch.float64)
    model = VQT(backbone, num_classes=3, num_queries=2).double().eval()
    tapped = model.tap(torch.randn(3, 3, 32, 32, dtype=torch.float64))
    for index, (block, tokens) in enumerate(zip(backbone.blocks, tapped.tokens, strict=True)):
        queries = model.queries[index].unsqueeze(0)
        absorbed, w_abs = query_block_output(block, queries, tokens, form="absorbed", return_attention=True)
        recomputed, w_rec = query_block_output(block, queries, tokens, form="recompute", return_attention=True)
        assert (absorbed - recomputed).abs().max() <= 1e-12
        assert (w_abs - w_rec).abs().max() <= 1e-12
        assert torch.allclose(w_abs.sum(-1), torch.ones_like(w_abs.sum(-1)))


def test_absorbed_form_refused_with_key_norm() -> None:
    backbone = tiny_vit("qknorm_scalenorm_gate")
    model = VQT(backbone, num_classes=3)
    tapped = model.tap(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="key norm"):
        query_block_output(backbone.blocks[0], model.queries[0][None], tapped.tokens[0], form="absorbed")


def test_queries_are_independent_and_per_layer_counts() -> None:
    backbone = tiny_vit("plain_cls")
    model = VQT(backbone, num_classes=3, num_queries=[1, 4, 2]).eval()
    tapped = model.tap(torch.randn(2, 3, 32, 32))
    outputs = model.query_outputs(tapped)
    assert [o.shape[1] for o in outputs] == [1, 4, 2]
    # A query's output does not depend on the other queries of its layer.
    alone = query_block_output(backbone.blocks[1], model.queries[1][:1].unsqueeze(0), tapped.tokens[1])
    assert torch.allclose(alone[:, 0], outputs[1][:, 0], atol=1e-6)
    assert model.features_from(tapped).shape == (2, 48 * (1 + 7))


def test_any_accepted_image_size() -> None:
    backbone = tiny_vit("plain_cls")
    backbone.set_input_size(img_size=48)
    model = VQT(backbone, num_classes=3).eval()
    images = torch.randn(2, 3, 48, 48)
    reference, _, _ = reference_vqt(backbone, list(model.queries), images)
    assert (model.features(images) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["plain_cls", "qknorm_scalenorm_gate"])
def test_recompute_form_runs_through_sdpa_and_equals_the_explicit_softmax(family: str, monkeypatch) -> None:
    """The fused-attention path (no weights asked) equals softmax(q k^T) v in value and gradient, in float64."""
    backbone = tiny_vit(family, dtype=torch.float64)
    model = VQT(backbone, num_classes=3, num_queries=2).double().eval()
    tapped = model.tap(torch.randn(3, 3, 32, 32, dtype=torch.float64))
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
    for index, (block, tokens) in enumerate(zip(backbone.blocks, tapped.tokens, strict=True)):
        results = []
        for weights_asked in (False, True):  # the weights force the explicit softmax
            queries = model.queries[index].detach().unsqueeze(0).requires_grad_()
            out = query_block_output(block, queries, tokens, form="recompute", return_attention=weights_asked)
            out = out[0] if weights_asked else out
            out.square().sum().backward()
            results.append((out.detach(), queries.grad))
        (fused_out, fused_grad), (plain_out, plain_grad) = results
        assert (fused_out - plain_out).abs().max() <= 1e-12
        assert relative_error(fused_grad, plain_grad) <= 1e-12
    assert len(calls) == len(backbone.blocks)  # once per block, only where no weights were asked
