"""The official VQT training recipe as data, plus the seeding rules every trainer shares.

Recipe (andytu28/VQT, inherited from VPT): Adam with *coupled* L2 weight decay (added to the gradient, as
`torch.optim.Adam(weight_decay=...)` does) and none on the head bias; batch 128; 100 epochs; 10 linear warm-up
epochs then a half cosine, stepped once per epoch, so epoch 0 runs at lr 0; the lr is scaled by batch/256.
Every choice is a field of `Recipe` and can be overridden.

Seeding (so that a grid trained in one pass reproduces each configuration trained alone, and the cached and
online trainers agree): a configuration's *seed* fixes its initialisation (`seed_init`) and its query-dropout
masks (drawn from its own generator, `SeededDropout`); the *data seed* (default: the seed) fixes the order of
the training images, which all configurations of a grid share because they read the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from vqt.methods.spec import LR_GRID, WD_GRID  # noqa: F401 (re-exported: vqt.training.LR_GRID)
from vqt.seeding import stream_generator

REFERENCE_BATCH = 256  # the official lr values are for batch 256 and scaled by batch / 256
_DROPOUT_STREAM = 0x9E3779B1  # keeps dropout draws independent of the init and data streams


@dataclass(frozen=True)
class Recipe:
    """How to train. Defaults are the official VQT recipe; `lr` is the unscaled grid value.

    Attributes:
        lr: peak learning rate before the batch/256 scaling (the official grid's value).
        weight_decay: coupled L2 weight decay (added to the gradient, as in `torch.optim.Adam`).
        batch_size: training batch.
        epochs: training epochs.
        warmup_epochs: linear warm-up epochs from lr 0 before the half cosine.
        scale_lr: multiply `lr` by batch_size / 256, as the official code does.
        betas: Adam's betas.
        eps: Adam's eps.
        head_bias_decay: also decay the head bias (the official code exempts it).
        drop_last: drop the last partial batch (the single-GPU official loader keeps it).
        seed: initialisation and query-dropout masks.
        data_seed: order of the training images; None: same as `seed`.
        eval_every: evaluate on the validation split every this many epochs (and always at the end).
        extra: free-form notes recorded with the run.
    """

    lr: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 128
    epochs: int = 100
    warmup_epochs: int = 10
    scale_lr: bool = True  # lr * batch_size / 256, as the official code does
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    head_bias_decay: bool = False  # the official code exempts the head bias from weight decay
    drop_last: bool = False  # single-GPU official loader keeps the last partial batch
    seed: int = 0  # initialisation and query-dropout masks
    data_seed: int | None = None  # order of the training images; None: same as `seed`
    eval_every: int = 1  # evaluate on the validation split every this many epochs (and always at the end)
    extra: dict = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be >= 0 and finite, got {value:g}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def effective_lr(self) -> float:
        """The peak learning rate actually used (after the batch/256 scaling)."""
        return scaled_lr(self.lr, self.batch_size, self.scale_lr)

    @property
    def order_seed(self) -> int:
        """The seed of the training-image order: `data_seed`, or `seed` when that is None."""
        return self.seed if self.data_seed is None else self.data_seed

    def replace(self, **changes: object) -> Recipe:
        """A copy with `changes` applied (the recipe itself is frozen)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field as a plain dict (what a run records)."""
        return asdict(self)


def scaled_lr(lr: float, batch_size: int, scale: bool = True) -> float:
    return lr * batch_size / REFERENCE_BATCH if scale else lr


def lr_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Multiplier of the peak lr in `epoch` (0-based): linear warm-up from 0, then a half cosine to 0."""
    if epoch < warmup_epochs:
        return epoch / max(1, warmup_epochs)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_at_epoch(recipe: Recipe, epoch: int, lr: float | None = None) -> float:
    """The learning rate of `epoch` for peak (unscaled) `lr` (default: the recipe's)."""
    peak = scaled_lr(recipe.lr if lr is None else lr, recipe.batch_size, recipe.scale_lr)
    return peak * lr_factor(epoch, recipe.epochs, recipe.warmup_epochs)


def param_groups(model: nn.Module, weight_decay: float, head_bias_decay: bool = False) -> list[dict]:
    """Trainable parameters with weight decay, and the head bias without (unless asked)."""
    head_bias = getattr(getattr(model, "head", None), "bias", None)
    decayed, exempt = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (exempt if parameter is head_bias and not head_bias_decay else decayed).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Adam:
    """Adam with coupled L2 decay; the lr is set per epoch by the trainer (starts at the epoch-0 value)."""
    groups = param_groups(model, recipe.weight_decay, recipe.head_bias_decay)
    return torch.optim.Adam(
        groups, lr=lr_at_epoch(recipe, 0), betas=recipe.betas, eps=recipe.eps, foreach=False
    )


def seed_init(model: nn.Module, seed: int) -> nn.Module:
    """(Re)initialise a VQT's queries and head from `seed` without touching the global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_parameters()
    return model


def dropout_generator(seed: int) -> torch.Generator:
    """The CPU generator a configuration's query-dropout masks come from."""
    return stream_generator(seed, _DROPOUT_STREAM)


def order_generator(seed: int) -> torch.Generator:
    """The CPU generator the training order comes from (shared by every configuration of a grid)."""
    return torch.Generator().manual_seed(seed)


def draw_keep_mask(
    shape: tuple[int, ...], p: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """A dropout keep-mask (1 = keep), drawn on the CPU so masks do not depend on the device."""
    keep = torch.empty(shape, dtype=like.dtype).bernoulli_(1.0 - p, generator=generator)
    return keep.to(like.device)


def apply_dropout(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with a given mask; the one expression both single and grid trainers evaluate."""
    return x * keep / (1.0 - p)


class SeededDropout(nn.Dropout):
    """`nn.Dropout` whose masks come from a private generator (reproducible per configuration)."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return apply_dropout(x, draw_keep_mask(tuple(x.shape), self.p, self.generator, x), self.p)


@contextmanager
def seeded_query_dropout(model: nn.Module, seed: int) -> Iterator[None]:
    """Swap a VQT's query dropout for a `SeededDropout` of the same rate while training."""
    original = model.query_dropout
    model.query_dropout = SeededDropout(original.p, dropout_generator(seed))
    model.query_dropout.train(original.training)
    try:
        yield
    finally:
        model.query_dropout = original
