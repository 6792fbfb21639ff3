"""The backbone tap: one no-autograd forward of a frozen timm ViT that keeps what the queries read.

For every block l it yields X_l = norm1_l(Z_{l-1}), the normalised input tokens (CLS, registers, patches) from
which the block computes its keys and values, plus the backbone's own pre-logits feature
(`forward_head(..., pre_logits=True)`, so each model's own pooling is honoured). The tap runs the model's own
`forward_features`; forward hooks on each `norm1` pick up X_l, so the backbone's output is exactly the plain
model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerScale
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vqt.errors import BackboneError


@dataclass
class TapOutput:
    """What one backbone pass yields: per-block normalised inputs and the pre-logits feature.

    Attributes:
        tokens: L tensors of shape (B, N, D): X_l = norm1_l(Z_{l-1}), the tokens block l's keys and values
            come from.
        pre_logits: (B, D): the backbone's own pooled, normalised feature.
    """

    tokens: list[torch.Tensor]  # L tensors of shape (B, N, D): X_l = norm1_l(Z_{l-1})
    pre_logits: torch.Tensor  # (B, D): the backbone's own pooled, normalised feature

    def to(self, device: torch.device) -> TapOutput:
        """This batch on `device` (itself when it is there already)."""
        if self.pre_logits.device == torch.device(device):
            return self
        return TapOutput([t.to(device, non_blocking=True) for t in self.tokens],
                         self.pre_logits.to(device, non_blocking=True))


def check_supported(model: nn.Module) -> None:
    """Refuse (clearly) backbones whose blocks the query path cannot reproduce exactly."""
    if not isinstance(model, VisionTransformer):
        raise BackboneError(
            f"VQT needs a timm VisionTransformer, got {type(model).__name__}; other families (EVA with rotary "
            "position embeddings, Swin, ConvNeXt, ...) are not supported"
        )
    for index, block in enumerate(model.blocks):
        if type(block) is not Block:
            raise BackboneError(
                f"block {index} is a {type(block).__name__}; only timm's pre-norm `Block` can be honoured exactly "
                "(parallel, post-norm and rotary-position blocks are refused)"
            )
        if type(block.attn) is not Attention:
            raise BackboneError(
                f"block {index} uses attention {type(block.attn).__name__}; only timm's `Attention` (fused qkv) "
                "is supported"
            )
        for name in ("ls1", "ls2"):
            scale = getattr(block, name)
            if not isinstance(scale, (nn.Identity, LayerScale)):
                raise BackboneError(f"block {index}: unsupported {name} of type {type(scale).__name__}")


class BackboneTap(nn.Module):
    """Runs a frozen timm ViT once and returns `TapOutput`; never records autograd history."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_supported(model)
        self.model = model

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        """The backbone's transformer blocks, in order."""
        return self.model.blocks

    @property
    def depth(self) -> int:
        """L, the number of blocks (one X_l per block in `TapOutput.tokens`)."""
        return len(self.model.blocks)

    @property
    def embed_dim(self) -> int:
        """D, the token width."""
        return int(self.model.embed_dim)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the backbone's weights are in (a backbone cast to bf16 runs in bf16)."""
        return self.model.patch_embed.proj.weight.dtype

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TapOutput:
        """One no-autograd pass over `images` (B, 3, H, W): X_l of every block and the pre-logits feature."""
        images = images.to(self.dtype)  # fp32 images into a bf16/fp16 backbone
        with block_inputs(self.model) as tokens:
            pre_logits = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        # A token-pooled feature is a view of the final token map: copy it so holding it does not keep the map.
        return TapOutput(tokens=tokens, pre_logits=pre_logits.contiguous())


@contextmanager
def block_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect X_l = norm1_l(Z_{l-1}) of every block during the forward run inside the `with` body.

    Hooks on each `norm1` record its output, so whatever runs the blocks (the plain model, or one adapted by
    LoRA/VPT/AdaptFormer, with or without autograd) yields the tokens that block's keys and values come from.
    The list is filled when the body ends; a forward that skipped a block is an error.
    """
    blocks = model.blocks
    captured: list[torch.Tensor | None] = [None] * len(blocks)

    def keep(index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            captured[index] = output

        return hook

    tokens: list[torch.Tensor] = []
    handles = [block.norm1.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        yield tokens
    finally:
        for handle in handles:
            handle.remove()
    if any(t is None for t in captured):
        raise RuntimeError("the forward skipped a block's norm1; cannot read its tokens")
    tokens.extend(t for t in captured if t is not None)


class EmbedDropoutTap(BackboneTap):
    """A `BackboneTap` that, while `active`, applies dropout `p` to the embedded tokens (after the position
    embedding, where the official code's embedding dropout sits), whatever the backbone's own `pos_drop` is.

    The dropout is a forward hook on `pos_drop` that exists only during this tap's own pass, so the backbone
    module (and whoever else uses it) is unchanged; it applies under `no_grad` too. Masks come from `generator`
    when one is set (drawn on the CPU, as the query-dropout masks are), else from torch's global generator.
    """

    def __init__(self, model: nn.Module, p: float) -> None:
        super().__init__(model)
        self.p = float(p)
        self.active = False
        self.generator: torch.Generator | None = None

    def _drop(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return F.dropout(output, self.p, training=True)
        keep = torch.empty(output.shape, dtype=output.dtype).bernoulli_(1.0 - self.p, generator=self.generator)
        return output * keep.to(output.device) / (1.0 - self.p)

    def forward(self, images: torch.Tensor) -> TapOutput:
        if not self.active or self.p == 0:
            return super().forward(images)
        handle = self.model.pos_drop.register_forward_hook(self._drop)
        try:
            return super().forward(images)
        finally:
            handle.remove()
