"""What the queries look at: their attention weights split into prefix tokens and the patch grid.

`VQT.query_attention(images)` gives, per layer l, the weights of the Q_l queries over the block's N ordinary tokens,
shape (B, H, Q_l, N), with N = prefix + patches: timm orders the tokens CLS (when the model has one), the register
tokens, then the patches row by row. These functions turn that into maps, and do no drawing (`vqt.viz.figure`
draws them). Every weight row sums to one, so a query's patch map sums to 1 minus the mass it gives the prefix
tokens; averaging heads keeps that true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a backbone lays out its N tokens: named prefix tokens, then a (rows, cols) grid of patches."""

    prefix_names: tuple[str, ...]
    grid: tuple[int, int]

    @property
    def num_prefix(self) -> int:
        return len(self.prefix_names)

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class LayerMaps:
    """One layer's query attention, split: `prefix` (B, G, Q, P) and `patches` (B, G, Q, rows, cols).

    G is 1 when the heads are averaged and H when they are kept apart.
    """

    layer: int
    prefix: torch.Tensor
    patches: torch.Tensor

    @property
    def num_queries(self) -> int:
        return int(self.patches.shape[2])


def token_layout(backbone: nn.Module, image_size: tuple[int, int] | None = None) -> TokenLayout:
    """The token layout of a timm ViT for images of `image_size` (height, width; unset: the size it was built for).

    The grid is `patch_embed.grid_size`, or for a model built with dynamic image size the grid `image_size` gives.
    Prefix tokens are named "CLS" and "reg1", "reg2", ... in timm's order.
    """
    patch_embed = backbone.patch_embed
    dynamic = getattr(backbone, "dynamic_img_size", False) or getattr(patch_embed, "dynamic_img_size", False)
    if image_size is not None and dynamic:
        grid = tuple(int(v) for v in patch_embed.dynamic_feat_size(tuple(image_size)))
    else:
        grid = tuple(int(v) for v in patch_embed.grid_size)
    num_prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    has_cls = getattr(backbone, "cls_token", None) is not None
    names = (["CLS"] if has_cls else []) + [f"reg{i}" for i in range(1, num_prefix - int(has_cls) + 1)]
    return TokenLayout(prefix_names=tuple(names[:num_prefix]), grid=(grid[0], grid[1]))


def reduce_heads(weights: torch.Tensor, split_heads: bool = False) -> torch.Tensor:
    """(B, H, Q, N) -> (B, G, Q, N): the mean over heads (G = 1), or the heads as they are (G = H)."""
    if weights.dim() != 4:
        raise ValueError(f"expected attention weights (B, H, Q, N), got shape {tuple(weights.shape)}")
    return weights if split_heads else weights.mean(dim=1, keepdim=True)


def split_tokens(weights: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N) -> prefix part (..., P) and patch part (..., rows, cols)."""
    if weights.shape[-1] != layout.num_tokens:
        raise ValueError(
            f"attention over {weights.shape[-1]} tokens, but the layout has {layout.num_prefix} prefix tokens "
            f"and a {layout.grid[0]}x{layout.grid[1]} patch grid ({layout.num_tokens} tokens)"
        )
    prefix = weights[..., : layout.num_prefix]
    patches = weights[..., layout.num_prefix :].reshape(*weights.shape[:-1], *layout.grid)
    return prefix, patches


def attention_maps(
    attention: Sequence[torch.Tensor], layout: TokenLayout, split_heads: bool = False
) -> list[LayerMaps]:
    """One `LayerMaps` per layer from per-layer weights (B, H, Q_l, N), as `VQT.query_attention` returns them."""
    maps = []
    for layer, weights in enumerate(attention):
        prefix, patches = split_tokens(reduce_heads(weights.detach().float().cpu(), split_heads), layout)
        maps.append(LayerMaps(layer=layer, prefix=prefix, patches=patches))
    return maps


@torch.no_grad()
def query_attention_maps(
    model: nn.Module, images: torch.Tensor, split_heads: bool = False
) -> tuple[TokenLayout, list[LayerMaps]]:
    """The layout and per-layer maps of a VQT model's queries for a batch of images (B, 3, H, W)."""
    layout = token_layout(model.backbone, (int(images.shape[-2]), int(images.shape[-1])))
    return layout, attention_maps(model.query_attention(images), layout, split_heads)


def model_view(image: torch.Tensor, transform: Mapping[str, Any]) -> np.ndarray:
    """A transformed image (3, H, W) back in displayable form (H, W, 3) in [0, 1]: what the model saw.

    Undoes only the normalisation recorded in the transform description (`mean`, `std`); resizing and cropping stay.
    """
    mean = torch.tensor([float(v) for v in transform["mean"]]).view(3, 1, 1)
    std = torch.tensor([float(v) for v in transform["std"]]).view(3, 1, 1)
    pixels = (image.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    return pixels.permute(1, 2, 0).numpy()
