"""A whole lr x weight-decay (x seed) grid trained together, over one read of the feature store per epoch.

Reading the stored tokens is shared by every configuration, so the grid costs little more than one run where
the read dominates. Parameters are batched along a leading config axis C: the queries of all configurations are
concatenated along Q into *one* `query_block_output` call per layer (queries are independent, so this is exact),
heads are a (C, K, F) weight, and a batched Adam applies per-configuration learning rates and decays.

Each configuration reproduces `train_cached` on the same model with the same recipe, lr, decay and seed (up to
float rounding): it is initialised by `seed_init(model, seed)`, draws its query-dropout masks from its own
generator in the same order (`dropout_generator(seed)`), and sees the same batches (`recipe.order_seed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vqt.backbone.query_path import query_block_output
from vqt.backbone.tap import TapOutput
from vqt.errors import VQTError
from vqt.methods.vqt import VQT, combine_features
from vqt.precision import autocast
from vqt.training.feeding import AnyStore, feed_batches, place_store, sequential_batches
from vqt.training.loop import History, epoch_batches
from vqt.training.recipe import (
    Recipe,
    apply_dropout,
    dropout_generator,
    lr_factor,
    order_generator,
    scaled_lr,
    seed_init,
)
from vqt.training.trainers import STORE_EMBED_DROPOUT


@dataclass(frozen=True)
class GridConfig:
    """One configuration: unscaled peak lr (as in the official grid), weight decay, seed.

    Attributes:
        lr: peak learning rate before the batch/256 scaling.
        weight_decay: coupled L2 weight decay.
        seed: initialisation and query-dropout seed of this configuration.
    """

    lr: float
    weight_decay: float
    seed: int = 0


def grid_configs(
    lrs: Sequence[float], weight_decays: Sequence[float], seeds: Sequence[int] = (0,)
) -> list[GridConfig]:
    """The Cartesian product, lr-major (the official search order)."""
    return [GridConfig(lr, wd, seed) for lr, wd, seed in itertools.product(lrs, weight_decays, seeds)]


class BatchedAdam:
    """Adam with coupled L2 decay for parameters stacked along a leading config axis, per-config lr and decay.

    Element-wise the same update as `torch.optim.Adam` (single-tensor implementation).
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        decays: Sequence[torch.Tensor],
        betas: tuple[float, float],
        eps: float,
    ) -> None:
        self.params = list(params)
        self.decays = list(decays)  # (C,) per parameter; zeros for the head bias
        self.decayed = [bool((decay != 0).any()) for decay in self.decays]  # once here, not a sync per step
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lrs: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        correction1 = 1 - beta1**self.steps
        correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        for p, decay, decayed, m, v in zip(
            self.params, self.decays, self.decayed, self.exp_avg, self.exp_avg_sq, strict=True
        ):
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad = p.grad
            if decayed:
                grad = grad + decay.view(shape) * p
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            p.sub_((lrs / correction1).view(shape) * (m / denom))


class VQTGrid(nn.Module):
    """C configurations of one VQT layout, parameters stacked along dim 0, sharing the template's backbone."""

    def __init__(self, template: VQT, configs: Sequence[GridConfig]) -> None:
        super().__init__()
        if not configs:
            raise ValueError("an empty grid")
        self.template = [template]  # a list: not registered as a submodule (its parameters are not ours)
        self.configs = list(configs)
        saved = {name: p.detach().clone() for name, p in template.named_parameters() if p.requires_grad}
        inits = []
        for config in self.configs:
            seed_init(template, config.seed)
            inits.append(
                {name: p.detach().clone() for name, p in template.named_parameters() if p.requires_grad}
            )
        with torch.no_grad():  # leave the template as it was
            for name, p in template.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
        stack = lambda name: nn.Parameter(torch.stack([init[name] for init in inits]))  # noqa: E731
        self.queries = nn.ParameterList([stack(f"queries.{i}") for i in range(len(template.queries))])
        self.layer_weights = (
            nn.ParameterList([stack(f"layer_weights.{i}") for i in range(len(template.queries))])
            if template.layer_weights is not None
            else None
        )
        self.head_weight = stack("head.weight")  # (C, K, F)
        self.head_bias = stack("head.bias")  # (C, K)
        self.dropout_p = float(template.query_dropout.p)
        self.generators = [dropout_generator(config.seed) for config in self.configs]

    @property
    def num_configs(self) -> int:
        return len(self.configs)

    def keep_masks(self, batch: int) -> list[torch.Tensor]:
        """Every layer's (C, B, Q_l, D) query-dropout keep-masks for one step; configuration c's from its own
        generator.

        The one loop over configurations left in the hot path is this RNG bookkeeping: configuration c draws its
        layers' masks in layer order from its generator, each on the CPU into its slice of one buffer, exactly as
        a lone model's `SeededDropout` draws them (same shapes, generator and order, so the grid reproduces
        `train_cached`). The buffer (pinned for a CUDA device) then moves to the device in one copy per step.
        """
        like = self.queries[0]
        shapes = [(self.num_configs, batch, *queries.shape[1:]) for queries in self.queries]
        sizes = [int(np.prod(shape)) for shape in shapes]
        flat = torch.empty(sum(sizes), dtype=like.dtype, pin_memory=like.device.type == "cuda")
        layers = [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]
        for c, generator in enumerate(self.generators):
            for keep in layers:
                keep[c].bernoulli_(1.0 - self.dropout_p, generator=generator)
        on_device = flat.to(like.device, non_blocking=True)
        return [part.view(shape) for part, shape in zip(on_device.split(sizes), shapes, strict=True)]

    def features(self, tapped: TapOutput) -> torch.Tensor:
        """(C, B, F) head inputs of every configuration; query dropout (per-config masks) when training.

        Batched: per layer one masked-query op for all configurations, one `query_block_output` call on the
        configurations' queries concatenated along Q (queries are independent, so this is exact), and one
        `combine_features` call over the (C, B, Q, D) outputs (the "weighted" variant's per-config weights too).
        """
        template = self.template[0]
        configs = self.num_configs
        outputs = []
        batch = tapped.pre_logits.shape[0]
        masks = self.keep_masks(batch) if self.training and self.dropout_p > 0 else None
        for index, (block, tokens) in enumerate(zip(template.backbone.blocks, tapped.tokens, strict=True)):
            queries = self.queries[index]  # (C, Q, D)
            _, num_queries, dim = queries.shape
            if masks is not None:
                dropped = apply_dropout(queries.unsqueeze(1), masks[index], self.dropout_p)  # (C, B, Q, D)
                joint = dropped.transpose(0, 1).reshape(batch, configs * num_queries, dim)  # (B, C*Q, D)
            else:
                joint = queries.reshape(1, configs * num_queries, dim)
            out = query_block_output(block, joint, tokens, form=template.form)  # (B, C*Q, D)
            outputs.append(out.view(batch, configs, num_queries, dim).transpose(0, 1))  # (C, B, Q, D)
        pre_logits = tapped.pre_logits.to(self.head_weight.dtype)
        weights = list(self.layer_weights) if self.layer_weights is not None else None
        return combine_features(pre_logits, outputs, template.variant, weights)

    def logits(self, tapped: TapOutput, precision: str = "fp32") -> torch.Tensor:
        """(C, B, K) logits: the query path under `precision`'s autocast, the heads in the master dtype (one batched
        matmul)."""
        with autocast(precision, self.head_weight.device):
            features = self.features(tapped)
        return torch.baddbmm(self.head_bias.unsqueeze(1), features.to(self.head_weight.dtype),
                             self.head_weight.transpose(1, 2))

    def export(self, index: int) -> VQT:
        """Configuration `index` as an ordinary VQT on the same backbone (for saving, evaluation)."""
        template = self.template[0]
        with torch.random.fork_rng(devices=[]):
            model = VQT(
                template.backbone,
                num_classes=template.head.out_features,
                num_queries=template.num_queries,
                variant=template.variant,
                query_dropout=template.query_dropout.p,
                form=template.form,
                embed_dropout=template.embed_dropout,
            ).to(self.head_weight.device, self.head_weight.dtype)
        with torch.no_grad():
            for layer, queries in enumerate(self.queries):
                model.queries[layer].copy_(queries[index])
            if self.layer_weights is not None and model.layer_weights is not None:
                for layer, weights in enumerate(self.layer_weights):
                    model.layer_weights[layer].copy_(weights[index])
            model.head.weight.copy_(self.head_weight[index])
            model.head.bias.copy_(self.head_bias[index])
        return model.eval()


@dataclass
class GridResult:
    """The trained grid: configurations, their histories, and the stacked parameters (`grid.export(i)`).

    Attributes:
        configs: the configurations, in training order (`grid_configs` order).
        histories: one `History` per configuration, same order.
        grid: every configuration's queries and head stacked along a leading axis.
        extra: free-form notes recorded with the run.
    """

    configs: list[GridConfig]
    histories: list[History]
    grid: VQTGrid
    extra: dict = field(default_factory=dict)

    def model(self, index: int) -> VQT:
        """Configuration `index` as an ordinary VQT on the same backbone, in eval mode (`VQTGrid.export`)."""
        return self.grid.export(index)

    def best(self) -> int:
        """Index of the configuration with the best last-epoch validation accuracy (first on ties)."""
        scores = [h.final_val_accuracy if h.final_val_accuracy is not None else -1.0 for h in self.histories]
        return int(np.argmax(scores))


@torch.no_grad()
def evaluate_grid_store(
    grid: VQTGrid,
    store: AnyStore,
    batch_size: int = 256,
    *,
    precision: str = "fp32",
    store_device: str = "cpu",
) -> list[float]:
    """Accuracy of every configuration on a store, reading it once."""
    grid.eval()
    device = grid.head_weight.device
    store = place_store(store, store_device, device)
    correct = torch.zeros(grid.num_configs, dtype=torch.int64, device=device)
    for tapped, labels in feed_batches(store, sequential_batches(len(store), batch_size), device):
        predictions = grid.logits(tapped, precision).argmax(-1)  # (C, B)
        correct += (predictions == labels.unsqueeze(0)).sum(1)
    return (correct.double().cpu() / max(1, len(store))).tolist()


def train_grid(
    template: VQT,
    store: AnyStore,
    configs: Sequence[GridConfig],
    recipe: Recipe | None = None,
    *,
    val_store: AnyStore | None = None,
    progress: bool = False,
    precision: str = "fp32",
    store_device: str = "cpu",
) -> GridResult:
    """Train every configuration together from `store`; `recipe.lr`, `.weight_decay`, `.seed` are overridden
    per configuration, everything else (epochs, schedule, batch, order seed) is shared.

    The template VQT fixes the layout (backbone, Q, variant, dropout rate, form); its own parameters are left
    unchanged. Use `GridResult.model(i)` to get configuration i as a VQT. `precision` and `store_device` as in
    `train_cached`: bf16 autocast for the query path (fp32 parameters, optimiser state, logits and losses), the
    store resident on the device ('cuda') or streamed from the host ('cpu').
    """
    if getattr(template, "embed_dropout", False):
        raise VQTError(STORE_EMBED_DROPOUT)
    recipe = recipe or Recipe()
    template.eval()
    device = template.head.weight.device
    grid = VQTGrid(template, configs).to(device)
    store = place_store(store, store_device, device)
    if val_store is not None:
        val_store = place_store(val_store, store_device, device)
    peak = torch.tensor(
        [scaled_lr(c.lr, recipe.batch_size, recipe.scale_lr) for c in grid.configs],
        dtype=grid.head_weight.dtype,
    ).to(device)
    decay = torch.tensor([c.weight_decay for c in grid.configs], dtype=grid.head_weight.dtype).to(device)
    params, decays = [], []
    for p in grid.parameters():
        params.append(p)
        exempt = p is grid.head_bias and not recipe.head_bias_decay
        decays.append(torch.zeros_like(decay) if exempt else decay)
    optimizer = BatchedAdam(params, decays, recipe.betas, recipe.eps)
    generator = order_generator(recipe.order_seed)
    histories = [History() for _ in grid.configs]
    for epoch in tqdm(range(recipe.epochs), desc="grid", unit="epoch", disable=not progress):
        lrs = peak * lr_factor(epoch, recipe.epochs, recipe.warmup_epochs)
        grid.train()
        totals = torch.zeros(grid.num_configs, dtype=torch.float64, device=device)  # no sync per batch
        seen = 0
        for tapped, labels in feed_batches(store, epoch_batches(len(store), recipe, generator), device):
            logits = grid.logits(tapped, precision)  # (C, B, K), fp32
            configs_, batch, classes = logits.shape
            losses = (
                F.cross_entropy(
                    logits.reshape(configs_ * batch, classes), labels.repeat(configs_), reduction="none"
                )
                .view(configs_, batch)
                .mean(1)
            )
            optimizer.zero_grad()
            losses.sum().backward()  # configs share no parameters: each gets its own loss's gradient
            optimizer.step(lrs)
            totals += losses.detach().double() * batch
            seen += batch
        last = epoch == recipe.epochs - 1
        run_val = val_store is not None and (last or (epoch + 1) % recipe.eval_every == 0)
        accuracies = (
            evaluate_grid_store(grid, val_store, precision=precision)  # type: ignore[arg-type]
            if run_val
            else [None] * grid.num_configs
        )
        totals_cpu = totals.cpu()
        for index, history in enumerate(histories):
            history.lr.append(float(lrs[index]))
            history.train_loss.append(float(totals_cpu[index]) / max(1, seen))
            history.val_accuracy.append(accuracies[index])
    grid.eval()
    return GridResult(configs=list(grid.configs), histories=histories, grid=grid)
