"""Visual Prompt Tuning (Jia et al., ECCV 2022) on a frozen timm ViT: a baseline that adapts the features.

Learnable prompt tokens sit after the prefix tokens (CLS, registers): "shallow" adds them once at the input,
"deep" replaces them before every block. Unlike VQT the ordinary tokens attend to the prompts, so features
change and backward must run through the whole (frozen) backbone.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from vqt.backbone.tap import check_supported
from vqt.methods.base import tuned_blocks
from vqt.methods.heads import init_head
from vqt.methods.spec import LR_GRID, WD_GRID, AdaptConfig, Builder, MethodGrid, MethodSpec
from vqt.methods.vqt import query_init_bound


class VPT(nn.Module):
    """Frozen ViT + prompts + linear head on the backbone's own pre-logits feature (prompts dropped first).

    `tuned_layers` (deep only): prompts before the last that many blocks only (`tuned_blocks`; None: every block);
    the blocks before them run on the plain tokens."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prompts: int = 10,
        mode: Literal["shallow", "deep"] = "deep",
        prompt_dropout: float = 0.1,
        tuned_layers: int | None = None,
    ) -> None:
        super().__init__()
        check_supported(backbone)
        self.backbone = backbone.eval()
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        if mode == "deep":
            blocks = tuned_blocks(backbone, tuned_layers)
        elif tuned_layers is not None:
            raise ValueError("tuned_layers is for VPT-deep (shallow prompts enter at the input only)")
        else:
            blocks = range(1)
        self.mode = mode
        self.first_block = blocks.start  # the block whose input first gets prompts
        self.prompts = nn.Parameter(torch.empty(len(blocks), num_prompts, backbone.embed_dim))
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        bound = query_init_bound(int(backbone.patch_embed.patch_size[0]), backbone.embed_dim)
        nn.init.uniform_(self.prompts, -bound, bound)
        init_head(self.head)

    def train(self, mode: bool = True) -> VPT:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        model = self.backbone
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        prefix, count = model.num_prefix_tokens, self.prompts.shape[1]
        for index, block in enumerate(model.blocks):
            slot = index - self.first_block
            if 0 <= slot < self.prompts.shape[0]:
                prompts = self.prompt_dropout(self.prompts[slot].expand(x.shape[0], -1, -1))
                rest = x[:, prefix:] if slot == 0 else x[:, prefix + count :]
                x = torch.cat([x[:, :prefix], prompts, rest], dim=1)
            x = block(x)
        x = torch.cat([x[:, :prefix], x[:, prefix + count :]], dim=1)
        return model.forward_head(model.norm(x), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def vpt_builder(mode: str) -> Builder:
    """VPT with its prompt placement fixed (`vpt-shallow`, `vpt-deep`)."""

    def build(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
        return VPT(backbone, num_classes, mode=mode, **kwargs)

    return build


GRID = MethodGrid(
    LR_GRID, WD_GRID,
    "VPT's own grid {50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05} x wd {0.01, 1e-3, 1e-4, 0} is for SGD (momentum 0.9; "
    "KMnP/vpt tune_vtab.py 'prompt', configs/base-prompt.yaml); with Adam we use the VQT grid (VQT's code is VPT's "
    "with Adam and these lrs)", sure=False)
SPEC_SHALLOW = MethodSpec("vpt-shallow", vpt_builder("shallow"), "online", True, "prompts at the input", grid=GRID)
SPEC_DEEP = MethodSpec("vpt-deep", vpt_builder("deep"), "online", True, "prompts replaced before every block",
                       grid=GRID, config=AdaptConfig)
