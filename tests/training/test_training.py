"""Training: the recipe's schedule and optimiser, cached == online, grid == each config alone, streaming eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers import max_difference
from tests.tiny_models import tiny_vit
from vqt.features import extract_features
from vqt.methods.vqt import VQT
from vqt.training import (
    GridConfig,
    Recipe,
    evaluate_store,
    evaluate_streaming,
    grid_configs,
    lr_at_epoch,
    lr_factor,
    seed_init,
    train_cached,
    train_grid,
    train_online,
)
from vqt.training.grid import BatchedAdam
from vqt.training.recipe import make_optimizer, param_groups, seeded_query_dropout

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPE = Recipe(lr=0.5, weight_decay=1e-3, batch_size=8, epochs=4, warmup_epochs=1)


def test_official_schedule_values() -> None:
    recipe = Recipe()
    assert (recipe.batch_size, recipe.epochs, recipe.warmup_epochs) == (128, 100, 10)
    assert recipe.effective_lr == pytest.approx(recipe.lr * 128 / 256)
    assert lr_factor(0, 100, 10) == 0.0  # epoch 0 runs at lr 0
    assert lr_factor(1, 100, 10) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)  # peak right after warm-up
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(99, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    factors = [lr_factor(e, 100, 10) for e in range(10, 100)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))  # cosine decreases monotonically
    assert lr_at_epoch(recipe, 10, lr=1.0) == pytest.approx(0.5)
    assert lr_at_epoch(Recipe(scale_lr=False), 10, lr=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Recipe(warmup_epochs=101)


def test_optimizer_is_adam_with_coupled_decay_and_no_decay_on_head_bias() -> None:
    model = VQT(tiny_vit(), num_classes=3)
    optimizer = make_optimizer(model, Recipe(weight_decay=0.01))
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
    decayed, exempt = param_groups(model, 0.01)
    assert decayed["weight_decay"] == 0.01 and exempt["weight_decay"] == 0.0
    assert len(exempt["params"]) == 1 and exempt["params"][0] is model.head.bias
    assert len(decayed["params"]) == 3 + 1  # queries of 3 layers, head weight; never backbone weights
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert len(param_groups(model, 0.01, head_bias_decay=True)) == 1


def test_batched_adam_matches_torch_adam() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(4, 3) for _ in range(2)]
    lrs, decays = [0.1, 0.01], [0.01, 0.0]
    singles = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizers = [
        torch.optim.Adam([p], lr=lr, weight_decay=wd, foreach=False)
        for p, lr, wd in zip(singles, lrs, decays, strict=True)
    ]
    stacked = torch.nn.Parameter(torch.stack(weights))
    batched = BatchedAdam([stacked], [torch.tensor(decays)], (0.9, 0.999), 1e-8)
    for _ in range(5):
        target = torch.randn(4, 3)
        for p, optimizer in zip(singles, optimizers, strict=True):
            optimizer.zero_grad()
            ((p - target) ** 3).sum().backward()
            optimizer.step()
        batched.zero_grad()
        ((stacked - target) ** 3).sum().backward()
        batched.step(torch.tensor(lrs))
    for index, p in enumerate(singles):
        assert torch.allclose(stacked[index], p, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    backbone = tiny_vit("dinov2_ls_reg")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(28, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 4, (28,), generator=generator)
    dataset = TensorDataset(images, labels)
    store = extract_features(
        backbone,
        dataset,
        tmp_path_factory.mktemp("store") / "train",
        backbone_spec="tiny@random",
        transform={"none": True},
        dataset_meta={"name": "synthetic"},
        dtype="float32",
        batch_size=16,
        progress=False,
    )
    return backbone, dataset, store


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_cached_training_equals_online_training(setup, dropout: float) -> None:
    backbone, dataset, store = setup
    cached = seed_init(VQT(backbone, num_classes=4, num_queries=2, query_dropout=dropout), 7)
    online = seed_init(VQT(backbone, num_classes=4, num_queries=2, query_dropout=dropout), 7)
    recipe = RECIPE.replace(seed=7)
    before = [p.detach().clone() for p in cached.trainable_parameters()]
    history_cached = train_cached(cached, store, recipe, val_store=store)
    history_online = train_online(online, dataset, recipe, val_dataset=dataset)
    moved = zip(before, cached.trainable_parameters(), strict=True)
    assert max(float((a - b.detach()).abs().max()) for a, b in moved) > 1e-3
    assert max_difference(cached, online) <= 1e-5
    assert len(history_cached.train_loss) == len(history_cached.val_accuracy) == recipe.epochs
    assert history_cached.lr == pytest.approx([lr_at_epoch(recipe, e) for e in range(recipe.epochs)])
    assert history_cached.train_loss == pytest.approx(history_online.train_loss, rel=1e-5)
    assert history_cached.val_accuracy == pytest.approx(history_online.val_accuracy)


@pytest.mark.parametrize(
    "variant, dropout", [("concat", 0.1), ("concat", 0.0), ("weighted", 0.1), ("mean", 0.0)]
)
def test_grid_equals_each_configuration_alone(setup, variant: str, dropout: float) -> None:
    _, _, store = setup
    backbone = setup[0]
    configs = grid_configs([0.5, 0.1], [1e-2, 0.0], seeds=[3]) + [GridConfig(0.25, 1e-4, seed=11)]
    # With one query in a layer the "weighted" weight is a pure scale that the L2 norm cancels: its gradient is
    # rounding noise, which Adam amplifies; give every layer two or more queries there.
    layout = [2, 3, 2] if variant == "weighted" else [1, 2, 1]
    template = VQT(backbone, num_classes=4, num_queries=layout, variant=variant, query_dropout=dropout)
    template_before = [p.detach().clone() for p in template.trainable_parameters()]
    result = train_grid(template, store, configs, RECIPE, val_store=store)
    for before, after in zip(template_before, template.trainable_parameters(), strict=True):
        assert torch.equal(before, after)  # the template is left as it was
    for index, config in enumerate(configs):
        alone = seed_init(VQT(backbone, 4, layout, variant=variant, query_dropout=dropout), config.seed)
        recipe = RECIPE.replace(lr=config.lr, weight_decay=config.weight_decay, seed=config.seed, data_seed=0)
        history = train_cached(alone, store, recipe, val_store=store)
        assert max_difference(result.model(index), alone) <= 1e-4, config
        assert result.histories[index].train_loss == pytest.approx(history.train_loss, rel=1e-5)
        assert result.histories[index].val_accuracy == pytest.approx(history.val_accuracy)
    assert 0 <= result.best() < len(configs)


def test_streaming_evaluation_shares_one_backbone_pass(setup) -> None:
    backbone, dataset, store = setup
    models = [seed_init(VQT(backbone, num_classes=4, num_queries=2), seed) for seed in range(3)]
    calls = []
    handle = backbone.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = evaluate_streaming(models, dataset, batch_size=10)
    finally:
        handle.remove()
    assert len(calls) == 3  # ceil(28 / 10) backbone passes for all three models together
    assert result.predictions.shape == (3, 28)
    for index, model in enumerate(models):
        expected = model(dataset.tensors[0]).argmax(-1)
        assert torch.equal(result.predictions[index], expected)
    assert result.accuracies == pytest.approx(evaluate_store(models, store))
    assert result.mean_accuracy == pytest.approx(sum(result.accuracies) / 3)


def test_streaming_evaluation_refuses_different_backbones(setup) -> None:
    backbone, dataset, _ = setup
    other = tiny_vit("dinov2_ls_reg", seed=5)
    with pytest.raises(ValueError, match="different backbone"):
        evaluate_streaming([VQT(backbone, 4), VQT(other, 4)], dataset)


def test_recipe_records_notes(tmp_path: Path) -> None:
    recipe = Recipe(extra={"normalisation": "imagenet"})
    assert recipe.to_dict()["extra"] == {"normalisation": "imagenet"}


def test_recipe_refuses_negative_lr_and_weight_decay() -> None:
    from vqt.training.recipe import Recipe

    Recipe(lr=0.0, weight_decay=0.0)  # a zero lr is allowed in Python (a reference test trains with it)
    with pytest.raises(ValueError, match=r"lr must be >= 0 and finite, got -1"):
        Recipe(lr=-1)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0 and finite, got -0.5"):
        Recipe(weight_decay=-0.5)
    with pytest.raises(ValueError, match=r"eval_every must be >= 1, got 0"):
        Recipe(eval_every=0)


@pytest.fixture(scope="module")
def backbone():
    return tiny_vit("plain_cls")


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_query_dropout_is_inverted_dropout_with_rate_p(backbone, p: float) -> None:
    """Kills `recipe_dropout_not_rescaled` (kept entries not scaled by 1/(1-p)) and
    `recipe_dropout_keep_prob_swapped` (entries dropped with probability 1-p instead of p).

    The reference (VPT/VQT) applies `nn.Dropout(p)` to the queries: each entry is zeroed with probability p and the
    kept ones are scaled by 1/(1-p), so the expected query is unchanged. The seeded dropout that the single and grid
    trainers share must do the same; comparing the trainers with each other cannot tell.
    """
    model = seed_init(VQT(backbone, num_classes=3, num_queries=2, query_dropout=p), 1).train()
    with seeded_query_dropout(model, seed=5):
        dropped = model.layer_queries(0, batch=4000).detach()  # (B, Q, D), a fresh mask per image
    queries = model.queries[0].detach().unsqueeze(0).expand_as(dropped)
    assert bool((queries != 0).all())
    kept = dropped != 0
    assert torch.allclose(dropped[kept], (queries / (1 - p))[kept], rtol=1e-6, atol=0)
    drop_rate = 1 - kept.double().mean().item()
    assert abs(drop_rate - p) < 0.01, drop_rate  # 384k draws: a standard deviation under 0.001
    mean_ratio = (dropped.double() / queries.double()).mean().item()
    assert abs(mean_ratio - 1) < 0.02, mean_ratio  # the expected query is unchanged (std under 0.002)
