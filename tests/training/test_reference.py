"""Trainers against plain, obviously-correct reference loops written here (they share no code under test).

The references use `torch.optim.Adam` with coupled L2 decay and no decay on the head bias, the recipe's lr
(peak = lr * batch / 256, linear warm-up from 0 then a half cosine, set once per epoch) and the recipe's batch
order (one `torch.randperm` per epoch from a generator seeded with the order seed, last partial batch kept),
all spelled out below rather than imported. Each test also checks that its tolerance is far tighter than what
a wrong weight decay or schedule would change, so a bug there cannot hide inside the tolerance.

- Head-only training (`fit_head`, and `train_store_configs` for `linear` / `head2toe`, what `vqt train` and
  `vqt sweep` call): catches a trainer that ignores `--wd` (e.g. forces 0), decays the head bias, ignores the
  lr schedule, or feeds the head features other than the method's.
- VQT from fp16 / bf16 stores (`train_cached`, `train_grid`): the reference computes X_l with its own forward,
  rounds it to the store dtype, and runs the queries through the block with the plain masked-concatenation
  reference of tests/tiny_models.py; catches errors in the store's encoding/decoding of reduced precision,
  in store batching (order, labels), in the query path and in the grid's batched Adam.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from tests.helpers import reference_lr, reference_tokens, reference_train, relative_difference, vqt_reference
from tests.tiny_models import tiny_vit
from vqt.features import extract_features
from vqt.methods.vqt import VQT
from vqt.protocol.fitting import build_model, fit_head, train_store_configs
from vqt.training import GridConfig, Recipe, seed_init, train_cached, train_grid

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4
COUNT = 28  # with batch 8: three full batches and a partial one, every epoch


# ------------------------------------------------------------------ the reference recipe, written out


# ------------------------------------------------------------------ 1. head-only training (linear, Head2Toe)

HEAD_RECIPE = Recipe(lr=2.0, weight_decay=0.05, batch_size=8, epochs=6, warmup_epochs=2, seed=3)
HEAD_TOLERANCE = 1e-5


def head_reference(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
                   **changes) -> list[torch.Tensor]:
    """The reference run of a Linear head (weight decayed, bias not) with `recipe` (+ deliberate `changes`)."""
    settings = dict(lr=recipe.lr, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                    epochs=recipe.epochs, warmup=recipe.warmup_epochs, order_seed=recipe.seed)
    settings.update(changes)

    def loss_of(index, decayed, bias):
        return F.cross_entropy(F.linear(features[index], decayed[0], bias), labels[index])

    return reference_train([head.weight], head.bias, loss_of, len(labels), **settings)


def assert_sensitive(expected: list[torch.Tensor], variants: dict[str, list[torch.Tensor]], tolerance: float) -> None:
    """Each deliberately wrong variant of the reference lands far outside the tolerance."""
    for name, wrong in variants.items():
        assert relative_difference(wrong, expected) > 100 * tolerance, name


def test_fit_head_matches_reference_adam() -> None:
    """fit_head (the head trainer of `linear` and `head2toe`) == plain Adam + coupled decay + warm-up/cosine.

    Catches: wd forced to 0 or ignored, decay applied to the head bias, lr schedule ignored or stepped wrongly,
    wrong lr scaling, a different batch order.
    """
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(COUNT, 24, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (COUNT,), generator=generator)
    model = nn.Module()
    model.head = nn.Linear(24, NUM_CLASSES)
    initial = [p.detach().clone() for p in (model.head.weight, model.head.bias)]
    reference_head = nn.Linear(24, NUM_CLASSES)
    reference_head.load_state_dict(model.head.state_dict())

    history = fit_head(model, features, labels, HEAD_RECIPE)

    expected = head_reference(reference_head, features, labels, HEAD_RECIPE)
    got = [model.head.weight, model.head.bias]
    assert relative_difference(got, initial) > 0.05  # it trained
    difference = relative_difference(got, expected)
    assert difference <= HEAD_TOLERANCE, difference
    assert history.lr == pytest.approx([reference_lr(e, lr=2.0, batch_size=8, epochs=6, warmup=2) for e in range(6)])
    assert_sensitive(expected, {
        "no weight decay": head_reference(reference_head, features, labels, HEAD_RECIPE, weight_decay=0.0),
        "decay on the bias": head_reference(reference_head, features, labels, HEAD_RECIPE, decay_bias=True),
        "constant lr": head_reference(reference_head, features, labels, HEAD_RECIPE, constant_lr=True),
    }, HEAD_TOLERANCE)


@pytest.fixture(scope="module")
def fp32_store(tmp_path_factory: pytest.TempPathFactory):
    backbone = tiny_vit("dinov2_ls_reg")
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(COUNT, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (COUNT,), generator=generator)
    store = extract_features(backbone, TensorDataset(images, labels), tmp_path_factory.mktemp("fp32") / "train",
                             backbone_spec="tiny@random", transform={"none": True}, dataset_meta={"name": "r"},
                             dtype="float32", batch_size=16, progress=False)
    return backbone, images, labels, store


@torch.no_grad()
def reference_head_features(method: str, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """linear: the pre-logits feature. head2toe (default: norm1 and attn sources, token mean): per block the
    mean of X_l and of attn(X_l); every piece, and the pre-logits feature first, L2-normalised on its own."""
    tokens, pre_logits = reference_tokens(backbone, images)
    if method == "linear":
        return pre_logits
    pieces = [pre_logits]
    for block, x in zip(backbone.blocks, tokens, strict=True):
        pieces += [x.mean(1), block.attn(x).mean(1)]
    return torch.cat([p / p.norm(dim=-1, keepdim=True) for p in pieces], dim=-1)


@pytest.mark.parametrize("method", ["linear", "head2toe"])
def test_store_head_methods_match_reference_adam(fp32_store, method: str) -> None:
    """`train_store_configs` for linear / Head2Toe (what `vqt train` and `vqt sweep` run from a store) == the
    reference on independently computed features, for each configuration's own lr, wd and seed.

    Catches: the configuration's wd or lr not reaching the trainer (wd forced to 0, the recipe's used instead),
    decay on the head bias, a wrong schedule, wrong features (e.g. Head2Toe pieces not normalised).
    """
    backbone, images, labels, store = fp32_store
    recipe = Recipe(lr=9.0, weight_decay=0.0, batch_size=8, epochs=5, warmup_epochs=2, seed=0)
    configs = [GridConfig(2.0, 0.05, seed=3), GridConfig(1.0, 0.02, seed=5)]
    trained = train_store_configs(method, backbone, NUM_CLASSES, {}, store, configs, recipe)
    features = reference_head_features(method, backbone, images)
    for config, result in zip(configs, trained, strict=True):
        assert result.failed is None and result.model is not None
        initial = build_model(method, backbone, NUM_CLASSES, {}, config.seed).head  # the same seeded init
        own = recipe.replace(lr=config.lr, weight_decay=config.weight_decay, seed=config.seed)
        expected = head_reference(initial, features, labels, own)
        got = [result.model.head.weight, result.model.head.bias]
        assert relative_difference(got, [initial.weight, initial.bias]) > 0.05  # it trained
        difference = relative_difference(got, expected)
        assert difference <= HEAD_TOLERANCE, (config, difference)
        assert_sensitive(expected, {
            "no weight decay": head_reference(initial, features, labels, own, weight_decay=0.0),
            "constant lr": head_reference(initial, features, labels, own, constant_lr=True),
        }, HEAD_TOLERANCE)


# ------------------------------------------------------------------ 4. VQT from reduced-precision stores

VQT_RECIPE = Recipe(lr=2.0, weight_decay=0.02, batch_size=8, epochs=4, warmup_epochs=1, seed=4)
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
NUM_QUERIES = 2


@pytest.fixture(scope="module", params=list(STORE_DTYPES))
def reduced_store(request, tmp_path_factory: pytest.TempPathFactory):
    backbone = tiny_vit("dinov2_ls_reg")
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(COUNT, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (COUNT,), generator=generator)
    store = extract_features(backbone, TensorDataset(images, labels), tmp_path_factory.mktemp(request.param) / "s",
                             backbone_spec="tiny@random", transform={"none": True}, dataset_meta={"name": "r"},
                             dtype=request.param, batch_size=16, progress=False)
    return request.param, backbone, images, labels, store


# Stated tolerance: both sides compute in fp32 from the same rounded tokens and differ only in fp32 rounding
# of differently ordered sums (absorbed vs masked attention), which a dozen Adam steps amplify a little: seen
# <= 1.5e-6. Training on the unrounded fp32 tokens instead moves the result by 3e-4 (fp16) / 5e-3 (bf16).
VQT_TOLERANCE = 2e-5


def rounded(tensors: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype):
    if isinstance(tensors, torch.Tensor):
        return tensors.to(dtype).float()
    return [t.to(dtype).float() for t in tensors]


def test_cached_training_from_reduced_precision_store_matches_reference(reduced_store) -> None:
    """`train_cached` from an fp16 / bf16 store == the reference trained on the fp32 tokens rounded to that dtype.

    Catches: store decoding (e.g. bf16 bits read as fp16, wrong layer/image order, labels out of step with the
    tokens), batch order, the query path's maths, the optimizer/recipe; and (checked below) a trainer that
    silently used the unrounded fp32 tokens is told apart from one that uses the rounded ones, by a margin.
    """
    name, backbone, images, labels, store = reduced_store
    dtype = STORE_DTYPES[name]
    model = seed_init(VQT(backbone, NUM_CLASSES, num_queries=NUM_QUERIES, query_dropout=0.0), VQT_RECIPE.seed)
    initial = [p.detach().clone() for p in model.trainable_parameters()]
    reference_model = seed_init(VQT(backbone, NUM_CLASSES, num_queries=NUM_QUERIES, query_dropout=0.0),
                                VQT_RECIPE.seed)

    train_cached(model, store, VQT_RECIPE)

    tokens, pre_logits = reference_tokens(backbone, images)
    expected = vqt_reference(reference_model, rounded(tokens, dtype), rounded(pre_logits, dtype), labels,
                             VQT_RECIPE.lr, VQT_RECIPE.weight_decay, VQT_RECIPE)
    got = model.trainable_parameters()
    assert relative_difference(got, initial) > 0.05  # it trained
    difference = relative_difference(got, expected)
    assert difference <= VQT_TOLERANCE, difference
    unrounded = vqt_reference(reference_model, tokens, pre_logits, labels, VQT_RECIPE.lr, VQT_RECIPE.weight_decay,
                              VQT_RECIPE)
    assert relative_difference(unrounded, expected) > 5 * VQT_TOLERANCE  # the tolerance resolves the rounding


def test_grid_training_from_reduced_precision_store_matches_reference(reduced_store) -> None:
    """`train_grid` (batched queries, batched Adam, per-config lr/wd) from an fp16 / bf16 store == the reference
    run of each configuration alone.

    Catches: per-config lr or wd mixed up or dropped in the batched Adam, decay on the head bias, the config axis
    scrambled in the joint query call, store decoding, batch order.
    """
    name, backbone, images, labels, store = reduced_store
    dtype = STORE_DTYPES[name]
    configs = [GridConfig(2.0, 0.02, seed=4), GridConfig(1.0, 0.0, seed=6), GridConfig(1.0, 0.05, seed=6)]
    template = VQT(backbone, NUM_CLASSES, num_queries=NUM_QUERIES, query_dropout=0.0)
    result = train_grid(template, store, configs, VQT_RECIPE.replace(data_seed=9))

    tokens, pre_logits = reference_tokens(backbone, images)
    tokens, pre_logits = rounded(tokens, dtype), rounded(pre_logits, dtype)
    for index, config in enumerate(configs):
        alone = seed_init(VQT(backbone, NUM_CLASSES, num_queries=NUM_QUERIES, query_dropout=0.0), config.seed)
        expected = vqt_reference(alone, tokens, pre_logits, labels, config.lr, config.weight_decay,
                                 VQT_RECIPE.replace(data_seed=9))
        got = result.model(index).trainable_parameters()
        difference = relative_difference(got, expected)
        assert difference <= VQT_TOLERANCE, (config, difference)
