"""Visual Query Tuning (Tu, Mai, Chao, CVPR 2023) on a frozen timm Vision Transformer.

Per block l, Q_l learnable queries P_l ask the block's frozen tokens (keys/values from X_l only) and the block's
output at the query rows O_l is collected; the backbone itself never sees the queries. The head reads
`[f_final, O_0, ..., O_{L-1}]` with every piece L2-normalised on its own (the reference "concat" feature).

The backbone runs once without autograd (`BackboneTap`); only the cheap query path records a graph, so
`backward()` never walks the backbone and the saved activations are about one X_l per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqt.backbone.query_path import Form, query_block_output
from vqt.backbone.tap import BackboneTap, EmbedDropoutTap, TapOutput
from vqt.methods.heads import init_head
from vqt.methods.spec import VQT_GRID, MethodSpec, QueryConfig
from vqt.precision import master_dtype
from vqt.seeding import stream_generator

Variant = Literal["concat", "mean", "weighted"]
VARIANTS: tuple[str, ...] = ("concat", "mean", "weighted")
EMBED_DROPOUT = 0.1  # the official code's dropout after the position embedding (ViT-B's dropout_rate)
_EMBED_DROPOUT_STREAM = 0x85EBCA6B  # embedding-dropout masks: independent of the query-dropout and order streams


def query_init_bound(patch_size: int, embed_dim: int) -> float:
    """The reference (VPT-style) uniform init bound: sqrt(6 / (3 * patch * patch + D))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + embed_dim))


def combine_features(
    pre_logits: torch.Tensor,
    outputs: Sequence[torch.Tensor],
    variant: Variant = "concat",
    layer_weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The head's input: the pre-logits feature and one piece per layer, each L2-normalised on its own.

    `outputs[l]` is O_l of shape (..., B, Q_l, D). "concat" flattens the Q_l tokens of a layer into one vector
    (normalised jointly), "mean" averages them, "weighted" takes a learned weighted sum (`layer_weights[l]`,
    (..., Q_l)). Leading axes (the grid's configurations, (C, B, Q_l, D) with weights (C, Q_l)) are batched: one
    op per layer for all of them; the pre-logits piece (B, F) is normalised once and broadcast over them.
    """
    lead = outputs[0].shape[:-2] if outputs else pre_logits.shape[:-1]
    pieces = []
    for index, out in enumerate(outputs):
        if variant == "concat":
            pieces.append(out.flatten(-2))
        elif variant == "mean":
            pieces.append(out.mean(dim=-2))
        elif variant == "weighted":
            assert layer_weights is not None
            weights = layer_weights[index]  # (Q,), or (C, Q): one row per config, broadcast over the batch
            weights = weights.unsqueeze(-2) if weights.dim() > 1 else weights
            weights = weights.expand(*out.shape[:-1])  # equal leading ranks: ONNX's Einsum wants them
            pieces.append(torch.einsum("...qd,...q->...d", out, weights))
        else:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    # In the pre-logits' dtype (the head's: fp32), whatever dtype the backbone computed the pieces in.
    normalised = [F.normalize(pre_logits, dim=-1, eps=1e-12).expand(*lead, -1)]
    normalised += [F.normalize(piece.to(pre_logits.dtype), dim=-1, eps=1e-12) for piece in pieces]
    return torch.cat(normalised, dim=-1)


@contextmanager
def seeded_embed_dropout(model: nn.Module, seed: int) -> Iterator[None]:
    """Draw a VQT's embedding-dropout masks (if it has them on) from a generator seeded by `seed`."""
    tap = getattr(model, "tap", None)
    if not isinstance(tap, EmbedDropoutTap):
        yield
        return
    original = tap.generator
    tap.generator = stream_generator(seed, _EMBED_DROPOUT_STREAM)
    try:
        yield
    finally:
        tap.generator = original


def feature_dim(embed_dim: int, num_queries: Sequence[int], variant: Variant) -> int:
    per_layer = [q * embed_dim if variant == "concat" else embed_dim for q in num_queries]
    return embed_dim + sum(per_layer)


class VQT(nn.Module):
    """A frozen timm ViT with per-layer learnable queries and a linear head.

    Args:
        backbone: a timm `VisionTransformer` (frozen here; kept in eval mode even while VQT trains).
        num_classes: number of output classes.
        num_queries: Q for every layer, or one Q per layer.
        variant: how a layer's Q outputs become its feature piece: "concat" (reference), "mean", "weighted".
        query_dropout: dropout on the query tokens in training (reference: 0.1), a fresh mask per image.
        form: attention form of the query path ("auto" picks per layer; see `vqt.backbone.query_path`).
        embed_dropout: opt-in: dropout 0.1 on the embedded tokens (after the position embedding) in training, as
            the official code does (it leaves its embedding dropout active). Off by default. It changes the
            backbone's tokens every pass, so it needs online training (`train_online`); a feature store holds one
            fixed pass and store training refuses it. The backbone module itself is not modified.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_queries: int | Sequence[int] = 1,
        variant: Variant = "concat",
        query_dropout: float = 0.1,
        form: Form = "auto",
        embed_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.tap = EmbedDropoutTap(backbone, EMBED_DROPOUT) if embed_dropout else BackboneTap(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        depth, dim = self.tap.depth, self.tap.embed_dim
        if isinstance(num_queries, int):
            num_queries = [num_queries] * depth
        num_queries = [int(q) for q in num_queries]
        if len(num_queries) != depth or min(num_queries) < 1:
            raise ValueError(f"num_queries must be a positive int or {depth} positive ints, got {num_queries}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_queries = num_queries
        self.variant: Variant = variant
        self.form: Form = form
        self.embed_dropout = embed_dropout
        # Master parameters: float64 for a float64 backbone, float32 for fp32 / bf16 / fp16 ones.
        master = dict(dtype=master_dtype(self.tap.dtype))
        self.queries = nn.ParameterList([nn.Parameter(torch.empty(q, dim, **master)) for q in num_queries])
        self.layer_weights = (
            nn.ParameterList([nn.Parameter(torch.ones(q, **master)) for q in num_queries])
            if variant == "weighted" else None
        )
        self.query_dropout = nn.Dropout(query_dropout)
        self.head = nn.Linear(feature_dim(dim, num_queries, variant), num_classes, **master)
        self.reset_parameters()
        self.train()

    @property
    def backbone(self) -> nn.Module:
        """The frozen timm ViT (the same module as `self.tap.model`)."""
        return self.tap.model

    def reset_parameters(self) -> None:
        """The reference initialisation of queries and head."""
        bound = query_init_bound(int(self.backbone.patch_embed.patch_size[0]), self.tap.embed_dim)
        for queries in self.queries:
            nn.init.uniform_(queries, -bound, bound)
        if self.layer_weights is not None:
            for weights in self.layer_weights:
                nn.init.ones_(weights)
        init_head(self.head)

    def train(self, mode: bool = True) -> VQT:
        """Train the queries and head; the backbone stays in eval mode (frozen statistics, no dropout inside it).

        With `embed_dropout` the tap drops out the embedded tokens in training mode (`EmbedDropoutTap`).
        """
        super().train(mode)
        self.tap.eval()
        if isinstance(self.tap, EmbedDropoutTap):
            self.tap.active = mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train: queries, head (and layer weights of the "weighted" variant)."""
        return [p for p in self.parameters() if p.requires_grad]

    def layer_queries(self, index: int, batch: int) -> torch.Tensor:
        """P_l as the block sees it: (1, Q, D) in eval; in training expanded to (B, Q, D) with dropout."""
        queries = self.queries[index].unsqueeze(0)
        if self.training and self.query_dropout.p > 0:
            return self.query_dropout(queries.expand(batch, -1, -1))
        return queries

    def query_outputs(self, tapped: TapOutput, return_attention: bool = False) -> list:
        """O_l (B, Q_l, D) for every layer from a tap output (online) or stored tokens (feature store)."""
        outputs = []
        for index, (block, tokens) in enumerate(zip(self.backbone.blocks, tapped.tokens, strict=True)):
            queries = self.layer_queries(index, tokens.shape[0])
            outputs.append(
                query_block_output(block, queries, tokens, form=self.form, return_attention=return_attention)
            )
        return outputs

    def features_from(self, tapped: TapOutput) -> torch.Tensor:
        """The head's input vector from what the tap (or a feature store) provides."""
        return self.features_from_outputs(tapped, self.query_outputs(tapped))

    def features_from_outputs(self, tapped: TapOutput, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head's input from the pre-logits of `tapped` and this model's query outputs O_l (computed here
        or, for several models at once, by `shared_query_outputs`)."""
        pre_logits = tapped.pre_logits.to(self.head.weight.dtype)
        return combine_features(pre_logits, outputs, self.variant, self.layer_weights)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The feature vector: D * (1 + sum Q_l) wide for "concat"."""
        return self.features_from(self.tap(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits in one backbone pass."""
        return self.head(self.features(images))

    @torch.no_grad()
    def query_attention(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer attention weights of the queries over the ordinary tokens, each (B, H, Q_l, N)."""
        return [weights for _, weights in self.query_outputs(self.tap(images), return_attention=True)]


def shared_layer_outputs(models: Sequence[VQT], index: int, block: nn.Module,
                         tokens: torch.Tensor) -> list[torch.Tensor]:
    """O_l of block `index` for several VQT models of one backbone, with one query-path call.

    A query never attends to other queries, so the queries of every model can ride through a block together:
    stacked along the query axis, run once, and split back (exact up to matmul summation order; the form is
    chosen for the stacked count). Serving many tasks this way costs one small call per layer, not one per task.
    """
    queries = [model.layer_queries(index, tokens.shape[0]) for model in models]
    lead = max(q.shape[0] for q in queries)
    stacked = torch.cat([q.expand(lead, -1, -1) for q in queries], dim=1)
    if stacked.shape[1] == 0:
        out = tokens.new_zeros(tokens.shape[0], 0, tokens.shape[-1])
    else:
        out = query_block_output(block, stacked, tokens)
    return list(out.split([q.shape[1] for q in queries], dim=1))


def shared_query_outputs(models: Sequence[VQT], tapped: TapOutput) -> list[list[torch.Tensor]]:
    """`model.query_outputs(tapped)` for several VQT models of one backbone (`shared_layer_outputs` per layer)."""
    per_model: list[list[torch.Tensor]] = [[] for _ in models]
    if not models:
        return per_model
    for index, (block, tokens) in enumerate(zip(models[0].backbone.blocks, tapped.tokens, strict=True)):
        for outputs, piece in zip(per_model, shared_layer_outputs(models, index, block, tokens), strict=True):
            outputs.append(piece)
    return per_model


@torch.no_grad()
def streamed_query_outputs(models: Sequence[VQT],
                           images: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """(pre-logits, every model's O_l) from one backbone pass that runs each block's query path as soon as the
    block's X_l exists and keeps no X_l: the same numbers as `shared_query_outputs(models, tap(images))`, with one
    layer's tokens alive at a time instead of all L (inference only: no autograd)."""
    backbone = models[0].backbone
    per_model: list[list[torch.Tensor]] = [[] for _ in models]
    inside = [False]  # the query path calls norm1 on the queries too: that call is not the block's X_l

    def attend(index: int, block: nn.Module):
        def hook(_module: nn.Module, _inputs: tuple, tokens: torch.Tensor) -> None:
            if inside[0]:
                return
            inside[0] = True
            try:
                pieces = shared_layer_outputs(models, index, block, tokens)
            finally:
                inside[0] = False
            for outputs, piece in zip(per_model, pieces, strict=True):
                outputs.append(piece)

        return hook

    handles = [block.norm1.register_forward_hook(attend(i, block)) for i, block in enumerate(backbone.blocks)]
    try:
        images = images.to(models[0].tap.dtype)
        pre_logits = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
    finally:
        for handle in handles:
            handle.remove()
    if any(len(outputs) != len(backbone.blocks) for outputs in per_model):
        raise RuntimeError("the forward skipped a block's norm1; cannot run its queries")
    return pre_logits, per_model


SPEC = MethodSpec("vqt", VQT, "store-grid", False, "Visual Query Tuning (frozen backbone, query path only)",
                  grid=VQT_GRID, config=QueryConfig)
