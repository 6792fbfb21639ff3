"""Head2Toe (Evci et al., ICML 2022): a Linear head on features pooled from every block, with group-lasso selection.

Sources (per block l, each a (B, N, D) token tensor):
- "norm1": X_l = norm1_l(Z_{l-1}), the block's normalised input (= the normalised output of block l-1);
- "attn":  the attention branch output attn_l(X_l) (before LayerScale and the residual);
- "norm2", "mlp", "block": the MLP's normalised input, the MLP branch output, the block output Z_l.

Pooling: Head2Toe average-pools each intermediate token map to a small fixed size and concatenates the results.
Here a pool size s=1 averages all N tokens (prefix and patches) into one D-vector; s>1 average-pools the patch
grid to s×s (D·s² values). The default `(1,)` is the CPU-sized choice: the paper's larger multi-size pooling
multiplies the feature width (and the group-lasso head) several times over, which `pool_sizes=(1, 2)` offers.
Every (block, source, pool size) piece, and the backbone's pre-logits feature, is L2-normalised on its own.

Store-trainable: "norm1" and "attn" are functions of the stored X_l alone (the store keeps X_l per block), so
`features_from(TapOutput)` builds them from a store batch; the other sources need the residual stream and are
online-only (`extract(images)`). Selection: group lasso on the head, keep the top `keep_fraction` features
(`vqt.methods.feature_selection`), fresh head on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqt.backbone.tap import BackboneTap, TapOutput
from vqt.methods.feature_selection import SelectedHead, select_and_refit, select_features

SOURCES: tuple[str, ...] = ("norm1", "attn", "norm2", "mlp", "block")
STORE_SOURCES: tuple[str, ...] = ("norm1", "attn")


def pool_tokens(tokens: torch.Tensor, size: int, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) -> (B, D·size²): the mean of all tokens for size 1, else the patch grid pooled to size×size."""
    if size == 1:
        return tokens.mean(dim=1)
    patches = tokens[:, num_prefix:]
    batch, _, dim = patches.shape
    grid_map = patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])
    return F.adaptive_avg_pool2d(grid_map, size).flatten(1)


class Head2Toe(nn.Module):
    """Frozen ViT, pooled multi-block features, Linear head on the selected ones.

    Args:
        sources: which per-block outputs to pool (see module docstring); default the store-computable ones.
        pool_sizes: pooled sizes per source (1 = token average).
        keep_fraction: fraction of features `fit` keeps after group lasso (1.0 = no selection).
        group_lasso: lambda of the selection penalty.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        sources: Sequence[str] = STORE_SOURCES,
        pool_sizes: Sequence[int] = (1,),
        keep_fraction: float = 1.0,
        group_lasso: float = 1e-4,
    ) -> None:
        super().__init__()
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(f"unknown Head2Toe sources {unknown}; choose from {SOURCES}")
        if not pool_sizes or min(pool_sizes) < 1:
            raise ValueError(f"pool sizes must be positive ints, got {pool_sizes}")
        self.tap = BackboneTap(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        self.sources = tuple(s for s in SOURCES if s in sources)  # canonical order
        self.pool_sizes = tuple(int(s) for s in pool_sizes)
        self.keep_fraction = keep_fraction
        self.group_lasso = group_lasso
        self.num_classes = num_classes
        self.head = SelectedHead(torch.arange(self.feature_dim), num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.tap.model

    @property
    def store_trainable(self) -> bool:
        return set(self.sources) <= set(STORE_SOURCES)

    @property
    def feature_dim(self) -> int:
        per_source = sum(s * s for s in self.pool_sizes) * self.tap.embed_dim
        return self.tap.embed_dim + self.tap.depth * len(self.sources) * per_source

    def train(self, mode: bool = True) -> Head2Toe:
        super().train(mode)
        self.tap.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _pieces(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        model = self.backbone
        prefix = int(model.num_prefix_tokens)
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        if grid[0] * grid[1] != tokens.shape[1] - prefix:  # another input size: assume a square grid
            side = int(round((tokens.shape[1] - prefix) ** 0.5))
            grid = (side, side)
        return [pool_tokens(tokens, s, prefix, grid) for s in self.pool_sizes]

    def _assemble(self, pre_logits: torch.Tensor, per_block: list[dict[str, list[torch.Tensor]]]) -> torch.Tensor:
        pieces = [pre_logits]
        for block_pieces in per_block:
            for source in self.sources:
                pieces.extend(block_pieces[source])
        return torch.cat([F.normalize(p.float(), dim=-1, eps=1e-12) for p in pieces], dim=-1)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) from images: one backbone pass, hooks pool each source as it is produced."""
        model = self.backbone
        per_block: list[dict[str, list[torch.Tensor]]] = [{} for _ in model.blocks]

        def keep(index: int, source: str):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                per_block[index][source] = self._pieces(output)

            return hook

        handles = []
        for index, block in enumerate(model.blocks):
            modules = {"norm1": block.norm1, "attn": block.attn, "norm2": block.norm2, "mlp": block.mlp, "block": block}
            handles += [modules[s].register_forward_hook(keep(index, s)) for s in self.sources]
        try:
            final = model.forward_features(images)
            pre_logits = model.forward_head(final, pre_logits=True)
        finally:
            for handle in handles:
                handle.remove()
        return self._assemble(pre_logits, per_block)

    @torch.no_grad()
    def features_from(self, tapped: TapOutput) -> torch.Tensor:
        """(B, feature_dim) from a tap output or store batch (X_l per block + pre-logits); store sources only."""
        if not self.store_trainable:
            raise ValueError(f"sources {self.sources} need the residual stream; only {STORE_SOURCES} come from a store")
        per_block = []
        dtype = next(self.backbone.parameters()).dtype
        for block, tokens in zip(self.backbone.blocks, tapped.tokens, strict=True):
            tokens = tokens.to(dtype)
            pieces: dict[str, list[torch.Tensor]] = {}
            if "norm1" in self.sources:
                pieces["norm1"] = self._pieces(tokens)
            if "attn" in self.sources:
                pieces["attn"] = self._pieces(block.attn(tokens))
            per_block.append(pieces)
        return self._assemble(tapped.pre_logits.to(dtype), per_block)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extract(images))

    def select(self, weight: torch.Tensor, keep_fraction: float | None = None) -> torch.Tensor:
        """Keep the features with the largest group-lasso column norms of `weight`; a fresh head reads them."""
        indices = select_features(weight, self.keep_fraction if keep_fraction is None else keep_fraction)
        self.head = SelectedHead(indices, self.num_classes).to(weight.device)
        return indices

    def fit(self, features: torch.Tensor, labels: torch.Tensor, **kwargs) -> Head2Toe:
        """Group-lasso selection and a fresh head on pre-extracted features (`extract`/`features_from`)."""
        self.head = select_and_refit(
            features, labels, self.num_classes, keep_fraction=self.keep_fraction, group_lasso=self.group_lasso, **kwargs
        )
        return self
