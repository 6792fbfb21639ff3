"""Head2Toe (Evci et al., ICML 2022): a Linear head on features pooled from every block, with group-lasso selection.

Sources (per block l, each a (B, N, width) token tensor):
- "norm1": X_l = norm1_l(Z_{l-1}), the block's normalised input (= the normalised output of block l-1);
- "attn":  the attention branch output attn_l(X_l) (before LayerScale and the residual);
- "norm2", "mlp", "block": the MLP's normalised input, the MLP branch output, the block output Z_l;
- "mlp_hidden": the MLP's hidden activation (after the GELU; 4·D wide for ViT-B).

Two poolings (each (block, source, size) piece, and the backbone's pre-logits feature, is L2-normalised on its
own, as Head2Toe's "unit_vector" normalisation does per source):
- the CPU-sized one (default, ``pool_sizes``): s=1 averages all N tokens (prefix and patches) into one vector of
  the source's width; s>1 average-pools the patch grid to s×s (width·s² values). The default `(1,)` keeps the head
  small: one vector per (block, source).
- the paper's (``target_sizes``, `pool_to_target`): Head2Toe's own rule (google-research/head2toe,
  ``models/finetune.py``, ``flatten_and_concat`` for token outputs): for a target size T and a source of width C,
  a source with C >= T is averaged over all tokens; otherwise pool = int(N / (T / C)) consecutive tokens (CLS
  included, in sequence order) are averaged with stride pool and no padding (the last N mod pool tokens are
  dropped), giving (N // pool)·C features, token-major. For ViT-B/16 at 224 px (N = 197) and T = 8192 that is
  10·768 = 7,680 for a 768-wide source and 2·3,072 = 6,144 for the MLP hidden layer. T is a per-task
  hyper-parameter of the paper (the official README uses 8192 for Caltech-101 and 512 for dSprites-orientation);
  `PAPER_SOURCES` are the per-block outputs its ViT-B/16 configuration reads (``encoder_i_pre_attn``,
  ``encoder_i_attn``, ``encoder_i_mlp_1``, ``encoder_i_mlp_2``).

What could not be established here (the paper's text was not available, only its code): the feature counts the
paper reports for ViT-B/16, and so whether ``mlp_1`` is the MLP's hidden layer after the activation (assumed) or
before it, and whether ``attn`` is taken before the residual (assumed). The official configuration also reads
whole-model outputs that are not offered here (``position_embedded_input``, ``root_output_with_cls``,
``cls_embedded``, ``encoded_sequence``; at T = 8192 roughly 7,680 features each): with ``target_sizes=(8192,)``
and `PAPER_SOURCES` this module gives 768 + 12·(3·7,680 + 6,144) = 350,976 features, the per-block part of the
official code's feature vector plus the pre-logits. That is about 18 times the default's 19,200 (768 + 12·2·768:
"norm1" and "attn", token means), with a group-lasso head as much wider, and "mlp_hidden"/"mlp" need the residual
stream (online training only), so the CPU-sized pooling stays the default.

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
from vqt.methods.spec import LR_GRID, WD_GRID, MethodGrid, MethodSpec
from vqt.precision import to_master

SOURCES: tuple[str, ...] = ("norm1", "attn", "norm2", "mlp_hidden", "mlp", "block")
STORE_SOURCES: tuple[str, ...] = ("norm1", "attn")
PAPER_SOURCES: tuple[str, ...] = ("norm1", "attn", "mlp_hidden", "mlp")  # pre_attn, attn, mlp_1, mlp_2
PAPER_TARGET_SIZES: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)  # the range the official examples span


def pool_tokens(tokens: torch.Tensor, size: int, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) -> (B, D·size²): the mean of all tokens for size 1, else the patch grid pooled to size×size."""
    if size == 1:
        return tokens.mean(dim=1)
    patches = tokens[:, num_prefix:]
    batch, _, dim = patches.shape
    grid_map = patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])
    return F.adaptive_avg_pool2d(grid_map, size).flatten(1)


def target_pool_size(num_tokens: int, width: int, target_size: int) -> int:
    """Head2Toe's pool size for a (B, N, C) source and target size T; 0 means the mean over all tokens."""
    if width >= target_size:
        return 0
    return int(num_tokens / (target_size / width))


def pool_to_target(tokens: torch.Tensor, target_size: int) -> torch.Tensor:
    """(B, N, C) -> Head2Toe's pooled features for target size T (see the module docstring): the token mean when
    C >= T (or the pool size rounds to 0), else non-overlapping windows of `target_pool_size` tokens averaged,
    the remainder dropped, flattened token-major: (B, (N // pool)·C)."""
    batch, num_tokens, width = tokens.shape
    pool = target_pool_size(num_tokens, width, target_size)
    if pool <= 0:
        return tokens.mean(dim=1)
    windows = num_tokens // pool
    return tokens[:, : windows * pool].reshape(batch, windows, pool, width).mean(dim=2).flatten(1)


def target_feature_width(num_tokens: int, width: int, target_size: int) -> int:
    """How many features `pool_to_target` gives for a source of N tokens of width C."""
    pool = target_pool_size(num_tokens, width, target_size)
    return width if pool <= 0 else (num_tokens // pool) * width


class Head2Toe(nn.Module):
    """Frozen ViT, pooled multi-block features, Linear head on the selected ones.

    Args:
        sources: which per-block outputs to pool (see module docstring); default the store-computable ones;
            `PAPER_SOURCES` for the paper's ViT configuration.
        pool_sizes: the CPU-sized pooling (default): pooled sizes per source (1 = token average).
        target_sizes: the paper's pooling instead: one pooled piece per target size T per source
            (`pool_to_target`; e.g. ``(8192,)``); `pool_sizes` must then be left at its default.
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
        target_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(f"unknown Head2Toe sources {unknown}; choose from {SOURCES}")
        if not pool_sizes or min(pool_sizes) < 1:
            raise ValueError(f"pool sizes must be positive ints, got {pool_sizes}")
        if target_sizes is not None:
            if not target_sizes or min(target_sizes) < 1:
                raise ValueError(f"target sizes must be positive ints, got {target_sizes}")
            if tuple(pool_sizes) != (1,):
                raise ValueError("give pool_sizes (the CPU-sized pooling) or target_sizes (the paper's), not both")
        self.tap = BackboneTap(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        self.sources = tuple(s for s in SOURCES if s in sources)  # canonical order
        self.pool_sizes = tuple(int(s) for s in pool_sizes)
        self.target_sizes = None if target_sizes is None else tuple(int(t) for t in target_sizes)
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

    def source_width(self, source: str) -> int:
        """The token width of a source: D, or the MLP's hidden width for "mlp_hidden"."""
        if source == "mlp_hidden":
            return int(self.backbone.blocks[0].mlp.fc1.out_features)
        return self.tap.embed_dim

    def piece_width(self, source: str, num_tokens: int | None = None) -> int:
        """Features one block's `source` contributes (all its pool/target sizes together)."""
        width = self.source_width(source)
        if self.target_sizes is None:
            return sum(s * s for s in self.pool_sizes) * width
        if num_tokens is None:
            grid = self.backbone.patch_embed.grid_size
            num_tokens = int(self.backbone.num_prefix_tokens) + int(grid[0]) * int(grid[1])
        return sum(target_feature_width(num_tokens, width, t) for t in self.target_sizes)

    @property
    def feature_dim(self) -> int:
        """Width of the head's input: the pre-logits plus every (block, source, size) piece."""
        return self.tap.embed_dim + self.tap.depth * sum(self.piece_width(s) for s in self.sources)

    def train(self, mode: bool = True) -> Head2Toe:
        super().train(mode)
        self.tap.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _pieces(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        if self.target_sizes is not None:
            return [pool_to_target(tokens, t) for t in self.target_sizes]
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
        return torch.cat([F.normalize(to_master(p), dim=-1, eps=1e-12) for p in pieces], dim=-1)

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
            modules = {"norm1": block.norm1, "attn": block.attn, "norm2": block.norm2, "mlp": block.mlp,
                       "mlp_hidden": block.mlp.act, "block": block}
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

    def feature_key(self) -> tuple:
        """What `features_from` depends on: the frozen backbone and the pooling, never the (trained) head, so
        models with one key share one computation of a store's features (`vqt.protocol.accuracy`)."""
        return ("head2toe", id(self.backbone), self.sources, self.pool_sizes, self.target_sizes)

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


SPEC = MethodSpec(
    "head2toe", Head2Toe, "store-head", False, "pooled multi-block features, group-lasso selection",
    grid=MethodGrid(LR_GRID, WD_GRID, "the VQT grid (VQT's compression head uses it); Head2Toe's own (JAX) search "
                    "is not reproduced", sure=False),
)
