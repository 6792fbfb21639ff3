"""Every method of the harness trains exactly the parameters it claims; combinations read the adapted tokens."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from peft.tuners.lora import LoraLayer

from tests.tiny_models import masked_block, reference_vqt, tiny_vit
from vqt.errors import VQTError
from vqt.methods.adaptformer import AdaptFormer
from vqt.methods.feature_selection import (
    fit_linear_head,
    group_lasso_penalty,
    num_kept,
    select_and_refit,
    select_features,
)
from vqt.methods.finetune import FineTune
from vqt.methods.head2toe import Head2Toe
from vqt.methods.heads import init_head
from vqt.methods.lora import LoRA, SplitQKV
from vqt.methods.registry import METHODS, create_method, get_method, trainable_parameter_count
from vqt.training.recipe import lr_factor

BATCH = 3
IMAGES = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 3, 4])


def _adapter_rule(name: str):
    """Which backbone-side parameters method `name` trains (head and queries are checked separately)."""
    return {
        "finetune": lambda n: True,
        "bitfit": lambda n: n.endswith("bias"),
        "vpt-shallow": lambda n: n.endswith("prompts"),
        "vpt-deep": lambda n: n.endswith("prompts"),
        "lora": lambda n: "lora_" in n,
        "adaptformer": lambda n: ".adapter." in n,
    }.get(name, lambda n: False)


def intended_ids(method: str, model: torch.nn.Module) -> set[int]:
    """ids of the parameters `method` must train, judged by each parameter's name in its owning module."""
    if method.startswith("vqt+"):
        adapter_rule = _adapter_rule(method.removeprefix("vqt+"))
        ids = {id(p) for p in [*model.vqt.queries, *model.vqt.head.parameters()]}
        return ids | {id(p) for n, p in model.adapter.named_parameters() if adapter_rule(n)}
    if method in ("vqt", "vqt-concat"):
        rule = lambda n: n.startswith(("queries.", "head."))  # noqa: E731
    else:
        adapter_rule = _adapter_rule(method)
        rule = lambda n: n.startswith("head.") or adapter_rule(n)  # noqa: E731
    return {id(p) for n, p in model.named_parameters() if rule(n)}


@pytest.mark.parametrize("method", list(METHODS))
def test_only_intended_parameters_train(method: str) -> None:
    model = create_method(method, tiny_vit("dinov2_ls_reg"), num_classes=5).train()
    named = dict(model.named_parameters())  # shared tensors listed once, under their first name
    before = {name: p.detach().clone() for name, p in named.items()}
    ids = intended_ids(method, model)
    intended = {name for name, p in named.items() if id(p) in ids}
    assert {name for name, p in named.items() if p.requires_grad} == intended
    assert trainable_parameter_count(model) == sum(named[n].numel() for n in intended)
    optimizer = torch.optim.SGD([named[n] for n in intended], lr=0.5)
    for _ in range(2):  # zero-initialised up-projections (LoRA B, AdaptFormer up) unblock A/down on step 2
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(IMAGES), LABELS).backward()
        optimizer.step()
    for name, parameter in named.items():
        if name in intended:
            assert parameter.grad is not None, name
            assert not torch.equal(parameter, before[name]), f"{name} did not change"
        else:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"


def _perturb(parameters, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("family", ["plain_cls", "dinov2_ls_reg", "qknorm_scalenorm_gate"])
@pytest.mark.parametrize("method", ["vqt+lora", "vqt+adaptformer", "vqt+bitfit"])
def test_combo_queries_equal_reference_on_adapted_backbone(method: str, family: str) -> None:
    combo = create_method(method, tiny_vit(family), num_classes=5, num_queries=2).eval()
    _perturb(combo.adapter.adapter_parameters())  # make the adaptation non-trivial
    _perturb(combo.vqt.queries, seed=2)
    queries = [q.detach() for q in combo.vqt.queries]
    with torch.no_grad():
        feature, _, outputs = reference_vqt(combo.backbone, queries, IMAGES)  # plain masked blocks, same modules
        ours = combo.query_outputs(IMAGES)
        ours_feature = combo.features(IMAGES)
    for a, b in zip(ours, outputs, strict=True):
        assert (a - b).abs().max() <= 2e-5
    assert (ours_feature - feature).abs().max() <= 2e-5


def test_vqt_vpt_deep_queries_see_prompts_and_never_disturb_them() -> None:
    combo = create_method("vqt+vpt-deep", tiny_vit("dinov2_ls_reg"), num_classes=5, num_prompts=4).eval()
    model = combo.backbone
    _perturb(combo.vqt.queries, seed=2)
    prompts, prefix = combo.adapter.prompts.detach(), model.num_prefix_tokens
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(IMAGES)))
        reference = []
        for index, block in enumerate(model.blocks):
            rest = x[:, prefix:] if index == 0 else x[:, prefix + prompts.shape[1] :]
            x = torch.cat([x[:, :prefix], prompts[index].expand(BATCH, -1, -1), rest], dim=1)
            n, q = x.shape[1], combo.vqt.queries[index].shape[0]
            allowed = torch.zeros(n + q, n + q, dtype=torch.bool)
            allowed[:, :n] = True  # queries read tokens and prompts; nobody reads a query
            seq = masked_block(block, torch.cat([x, combo.vqt.queries[index].expand(BATCH, -1, -1)], 1), allowed)
            x, out = seq[:, :n], seq[:, n:]
            reference.append(out)
        ours = combo.query_outputs(IMAGES)
        plain_vpt_logits = combo.adapter.features(IMAGES)
        x = torch.cat([x[:, :prefix], x[:, prefix + prompts.shape[1] :]], dim=1)
        reference_pre_logits = model.forward_head(model.norm(x), pre_logits=True)
    assert (plain_vpt_logits - reference_pre_logits).abs().max() <= 2e-5
    for a, b in zip(ours, reference, strict=True):
        assert (a - b).abs().max() <= 2e-5


def test_combo_gradients_reach_adapter_through_queries() -> None:
    """The query path's loss alone reaches the adapter: queries read adapted, differentiable tokens."""
    combo = create_method("vqt+lora", tiny_vit("plain_cls"), num_classes=5).train()
    _perturb(combo.adapter.adapter_parameters())
    outputs = combo.query_outputs(IMAGES)
    sum(o.square().sum() for o in outputs).backward()
    grads = [p.grad for p in combo.adapter.adapter_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_lora_uses_peft_on_split_q_and_v() -> None:
    backbone = tiny_vit("plain_cls")
    with torch.no_grad():
        plain = backbone.forward_features(IMAGES)
    model = LoRA(backbone, num_classes=5, rank=4).eval()
    for block in backbone.blocks:
        assert isinstance(block.attn.qkv, SplitQKV)
        assert isinstance(block.attn.qkv.q, LoraLayer) and isinstance(block.attn.qkv.v, LoraLayer)
        assert not isinstance(block.attn.qkv.k, LoraLayer)
    with torch.no_grad():  # B starts at zero: the split, adapted model is the plain one
        assert (backbone.forward_features(IMAGES) - plain).abs().max() <= 1e-5
    fused = LoRA(tiny_vit("plain_cls"), num_classes=5, rank=4, targets="fused", proj=True)
    assert all(isinstance(b.attn.qkv, LoraLayer) and isinstance(b.attn.proj, LoraLayer) for b in fused.backbone.blocks)
    assert trainable_parameter_count(model) == 3 * 2 * (4 * 48 + 48 * 4) + 5 * 48 + 5


def test_adaptformer_starts_as_frozen_model() -> None:
    backbone = tiny_vit("dinov2_ls_reg")
    with torch.no_grad():
        plain = backbone.forward_features(IMAGES)
        AdaptFormer(backbone, num_classes=5, bottleneck=8).eval()
        assert torch.equal(backbone.forward_features(IMAGES), plain)


def test_head2toe_feature_shapes_and_store_path() -> None:
    backbone = tiny_vit("dinov2_ls_reg")
    model = Head2Toe(backbone, num_classes=5)
    assert model.store_trainable
    assert model.extract(IMAGES).shape == (BATCH, 48 + 3 * 2 * 48)
    tapped = model.tap(IMAGES)  # what a feature store keeps: X_l and pre-logits
    assert (model.features_from(tapped) - model.extract(IMAGES)).abs().max() <= 1e-5
    wide = Head2Toe(backbone, num_classes=5, sources=("norm1", "attn", "norm2", "mlp", "block"), pool_sizes=(1, 2))
    assert not wide.store_trainable
    features = wide.extract(IMAGES)
    assert features.shape == (BATCH, wide.feature_dim) == (BATCH, 48 + 3 * 5 * (1 + 4) * 48)
    pieces = features.split(48, dim=-1)  # every (block, source, pool size) piece is on the unit sphere
    assert torch.allclose(pieces[0].norm(dim=-1), torch.ones(BATCH))
    assert (features.norm(dim=-1) ** 2 - (1 + 3 * 5 * 2)).abs().max() <= 1e-3
    with pytest.raises(ValueError):
        wide.features_from(tapped)


def test_group_lasso_selection_keeps_fraction() -> None:
    weight = torch.zeros(4, 10)
    weight[:, [1, 4, 7]] = torch.tensor([3.0, 2.0, 1.0])
    weight[:, 9] = 0.5
    assert select_features(weight, 0.3).tolist() == [1, 4, 7]
    assert num_kept(9984, 0.7) == 6989 and num_kept(5, 0.01) == 1
    assert group_lasso_penalty(weight).item() == pytest.approx(2 * (3 + 2 + 1 + 0.5))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 20, generator=generator)
    labels = (features[:, 3] > 0).long()  # only feature 3 matters
    head = select_and_refit(features, labels, 2, keep_fraction=0.25, group_lasso=1e-2, epochs=40, lr=1e-2)
    assert head.indices.numel() == 5 and 3 in head.indices.tolist()
    assert head(features).shape == (40, 2)
    model = Head2Toe(tiny_vit("plain_cls"), num_classes=2, keep_fraction=0.5)
    model.fit(model.extract(IMAGES.repeat(4, 1, 1, 1)), torch.tensor([0, 1, 1] * 4), epochs=2)
    assert model.head.indices.numel() == num_kept(model.feature_dim, 0.5)
    assert model(IMAGES).shape == (BATCH, 2)


def test_finetune_layer_decay_groups() -> None:
    model = FineTune(tiny_vit("plain_cls"), num_classes=5)
    groups = model.param_groups(lr=1.0, weight_decay=0.1, layer_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == 0.5**4  # head/norm 1.0, embeddings 0.5^(L+1), L = 3
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))


def test_registry() -> None:
    assert {"linear", "head2toe", "vqt", "finetune", "bitfit", "vpt-shallow", "vpt-deep", "lora", "adaptformer",
            "vqt+adaptformer", "vqt+lora", "vqt+vpt-deep"} <= set(METHODS)
    assert [n for n, s in METHODS.items() if s.store_trainable] == ["linear", "head2toe", "vqt"]
    with pytest.raises(VQTError, match="did you mean"):
        get_method("lora8")


def test_feature_selection_leaves_the_global_random_stream_alone() -> None:
    """Compression used to call torch.manual_seed(seed): every later random draw of the caller was reseeded."""
    features, labels = torch.randn(32, 8), torch.randint(0, 2, (32,))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = select_and_refit(features, labels, 2, keep_fraction=0.5, epochs=2, seed=7)
    assert torch.equal(torch.rand(3), expected)
    second = select_and_refit(features, labels, 2, keep_fraction=0.5, epochs=2, seed=7)
    assert torch.equal(first.indices, second.indices) and torch.equal(first.linear.weight, second.linear.weight)


def plain_head_training(features, labels, head, *, epochs, lr, weight_decay, factor, batch_size=128, seed=0):
    """The obvious loop: Adam, coupled L2 on the weight only, the lr set by hand at the start of every epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([{"params": [head.weight], "weight_decay": weight_decay},
                                  {"params": [head.bias], "weight_decay": 0.0}], lr=lr)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * factor(epoch)
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            index = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(head(features[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head


def test_head_fitting_follows_a_schedule_and_spares_the_bias_from_decay() -> None:
    """The compression heads once trained at a constant rate with the bias decayed; the official trainer warms up,
    decays with a cosine and exempts the head bias."""
    features, labels = torch.randn(300, 12), torch.randint(0, 3, (300,))
    factor = partial(lr_factor, epochs=6, warmup_epochs=2)
    torch.manual_seed(0)
    ours = torch.nn.Linear(12, 3)
    plain = copy.deepcopy(ours)
    fit_linear_head(features, labels, ours, epochs=6, lr=0.5, weight_decay=0.1, lr_factor=factor, seed=3)
    plain_head_training(features, labels, plain, epochs=6, lr=0.5, weight_decay=0.1, factor=factor, seed=3)
    assert torch.allclose(ours.weight, plain.weight, atol=1e-6) and torch.allclose(ours.bias, plain.bias, atol=1e-6)
    frozen = torch.nn.Linear(12, 3)  # a schedule of zeros trains nothing
    before = copy.deepcopy(frozen.state_dict())
    fit_linear_head(features, labels, frozen, epochs=3, lr=0.5, lr_factor=lambda epoch: 0.0)
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())


def test_the_selection_probe_starts_from_the_reference_head() -> None:
    """Untrained (0 epochs), the probe's column norms pick the features: they must be those of `init_head`'s
    initialisation from the seed, as the official compression rebuilds the reference head before selecting."""
    features, labels = torch.randn(20, 30), torch.randint(0, 4, (20,))
    head = select_and_refit(features, labels, 4, keep_fraction=0.3, epochs=0, seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        probe = init_head(torch.nn.Linear(30, 4))
    assert torch.equal(head.indices, select_features(probe.weight, 0.3))
