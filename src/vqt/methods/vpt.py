"""Visual Prompt Tuning (Jia et al., ECCV 2022) on a frozen timm ViT: a baseline that adapts the features.

Learnable prompt tokens sit after the prefix tokens (CLS, registers): "shallow" adds them once at the input,
"deep" replaces them before every block. Unlike VQT the ordinary tokens attend to the prompts, so features
change and backward must run through the whole (frozen) backbone.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vqt.backbone.tap import check_supported
from vqt.methods.vqt import HEAD_BIAS_INIT, query_init_bound


class VPT(nn.Module):
    """Frozen ViT + prompts + linear head on the backbone's own pre-logits feature (prompts dropped first)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prompts: int = 10,
        mode: Literal["shallow", "deep"] = "deep",
        prompt_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_supported(backbone)
        self.backbone = backbone.eval()
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        layers = len(backbone.blocks) if mode == "deep" else 1
        self.mode = mode
        self.prompts = nn.Parameter(torch.empty(layers, num_prompts, backbone.embed_dim))
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        bound = query_init_bound(int(backbone.patch_embed.patch_size[0]), backbone.embed_dim)
        nn.init.uniform_(self.prompts, -bound, bound)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
        nn.init.constant_(self.head.bias, HEAD_BIAS_INIT)

    def train(self, mode: bool = True) -> VPT:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        model = self.backbone
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        prefix, count = model.num_prefix_tokens, self.prompts.shape[1]
        for index, block in enumerate(model.blocks):
            if index < self.prompts.shape[0]:
                prompts = self.prompt_dropout(self.prompts[index].expand(x.shape[0], -1, -1))
                rest = x[:, prefix:] if index == 0 else x[:, prefix + count :]
                x = torch.cat([x[:, :prefix], prompts, rest], dim=1)
            x = block(x)
        x = torch.cat([x[:, :prefix], x[:, prefix + count :]], dim=1)
        return model.forward_head(model.norm(x), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
