"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck branch in parallel with each block's MLP.

    x_out = x' + MLP(LN(x')) + s · up(dropout(ReLU(down(LN(x')))))      (the paper's AdaptMLP, "parallel")

The up-projection starts at zero, so the adapted model starts as the frozen one. The branch replaces the block's
`mlp` module (`AdaptMLP` wraps it), so timm's `Block.forward` *and* the VQT query path (which calls `block.mlp`)
both run the adapted MLP with no other change. With LayerScale (DINOv2) the branch sits inside the block's `ls2`
like the MLP it extends; on ViT-B/16 (no LayerScale) this is exactly the paper's formula.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqt.methods.base import AdaptedBackbone, tuned_blocks
from vqt.methods.spec import FULL_WD, AdaptConfig, MethodGrid, MethodSpec


class Bottleneck(nn.Module):
    """down (D -> r), ReLU, dropout, up (r -> D) scaled by s; LoRA-style init: kaiming down, zero up and biases."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


class AdaptMLP(nn.Module):
    """The block's frozen MLP plus a parallel `Bottleneck` reading the same (normalised) input."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


class AdaptFormer(AdaptedBackbone):
    """Frozen ViT whose every MLP gets a parallel bottleneck (width `bottleneck`, scale `scale`); adapters train.

    `tuned_layers`: only the last that many blocks get one (`tuned_blocks`; None: all)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        tuned_layers: int | None = None,
    ) -> None:
        super().__init__(backbone, num_classes)
        dim = int(backbone.embed_dim)
        for index in tuned_blocks(backbone, tuned_layers):
            block = backbone.blocks[index]
            if isinstance(block.mlp, AdaptMLP):
                raise ValueError("AdaptFormer: this backbone already has AdaptMLP branches")
            reference = next(block.mlp.parameters())
            adapter = Bottleneck(dim, bottleneck, scale, dropout).to(reference.device, reference.dtype)
            block.mlp = AdaptMLP(block.mlp, adapter)
            self._adapter_modules.append(adapter)


SPEC = MethodSpec(
    "adaptformer", AdaptFormer, "online", True, "parallel bottleneck branch on every MLP",
    grid=MethodGrid((0.02, 0.01, 0.002, 0.001), FULL_WD,
                    "NOAH official VTAB scripts for the adapter baseline (configs/Adapter/VTAB: AdamW, lr 0.005, wd "
                    "1e-4, batch 64), as for LoRA; AdaptFormer's own VTAB-1k settings not checked", sure=False),
    config=AdaptConfig,
)
