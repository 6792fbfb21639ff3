"""LoRA (Hu et al., ICLR 2022) on a frozen timm ViT, through Hugging Face `peft`.

timm fuses the query, key and value projections into one `attn.qkv` Linear (out = 3·D). LoRA as published adapts
W_q and W_v with *separate* rank-r factors; a rank-r adapter on the fused matrix would instead share one A across
q, k and v and also adapt W_k. So `split_fused_qkv` first replaces each fused `qkv` by `SplitQKV` (three Linears
`q`, `k`, `v` holding the same weights, output concatenated in the same order, so `Attention` and the query path
see the same (B, N, 3·D) tensor) and peft then targets `attn.qkv.q` / `attn.qkv.v` by name. `targets="fused"`
keeps the fused Linear and adapts it as one matrix, for comparison; `proj=True` also adapts the output projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from vqt.methods.base import AdaptedBackbone, tuned_blocks
from vqt.methods.spec import FULL_WD, AdaptConfig, MethodGrid, MethodSpec

Targets = Literal["qv", "qkv", "fused"]
TARGETS: tuple[str, ...] = ("qv", "qkv", "fused")


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears (`q`, `k`, `v`), so adapters can target each projection by name."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        width = fused.out_features // 3
        has_bias = fused.bias is not None
        for index, name in enumerate(("q", "k", "v")):
            linear = nn.Linear(fused.in_features, width, bias=has_bias, device=fused.weight.device,
                               dtype=fused.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(fused.weight[index * width : (index + 1) * width])
                if has_bias:
                    linear.bias.copy_(fused.bias[index * width : (index + 1) * width])
            linear.weight.requires_grad_(fused.weight.requires_grad)
            if has_bias:
                linear.bias.requires_grad_(fused.bias.requires_grad)
            setattr(self, name, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def split_fused_qkv(model: nn.Module) -> nn.Module:
    """Replace every block's fused `attn.qkv` Linear by an equivalent `SplitQKV` (in place; idempotent)."""
    for block in model.blocks:
        if type(block.attn.qkv) is nn.Linear:
            block.attn.qkv = SplitQKV(block.attn.qkv)
    return model


def target_pattern(targets: Targets, proj: bool, blocks: Sequence[int] | None = None) -> str:
    """The regex (peft full-match) naming the Linears to adapt, in every block or only in `blocks`."""
    if targets not in TARGETS:
        raise ValueError(f"unknown LoRA targets {targets!r}; choose one of {TARGETS}")
    names = {"qv": r"attn\.qkv\.(q|v)", "qkv": r"attn\.qkv\.(q|k|v)", "fused": r"attn\.qkv"}[targets]
    if proj:
        names = f"({names}|attn\\.proj)"
    index = r"\d+" if blocks is None else "(" + "|".join(str(int(b)) for b in blocks) + ")"
    return rf"(.*\.)?blocks\.{index}\.{names}"


class LoRA(AdaptedBackbone):
    """Frozen ViT with peft LoRA adapters on the attention projections; the adapters and the head train.

    Args:
        rank, alpha, dropout: LoRA's r, lora_alpha (scale alpha/r) and lora_dropout.
        targets: "qv" (the LoRA paper: W_q and W_v, separate factors), "qkv" (all three) or "fused" (one adapter on
            timm's fused matrix).
        proj: also adapt the attention output projection.
        tuned_layers: adapt only the last that many blocks (`tuned_blocks`; None: all).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        targets: Targets = "qv",
        proj: bool = False,
        tuned_layers: int | None = None,
    ) -> None:
        super().__init__(backbone, num_classes)
        blocks = None if tuned_layers is None else tuned_blocks(backbone, tuned_layers)
        pattern = target_pattern(targets, proj, blocks)
        if targets != "fused":
            split_fused_qkv(backbone)
        self.config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
        inject_adapter_in_model(self.config, backbone)
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_("lora_" in name)
        self._adapter_modules = [m for n, m in backbone.named_modules() if n.endswith("lora_dropout")]
        if not self.adapter_parameters():
            raise ValueError(f"LoRA: no module of the backbone matched {pattern!r}")


SPEC = MethodSpec(
    "lora", LoRA, "online", True, "peft LoRA on W_q, W_v (split from timm's fused qkv)",
    grid=MethodGrid((0.02, 0.01, 0.002, 0.001), FULL_WD,
                    "NOAH official VTAB scripts (ZhangYuanhan-AI/NOAH configs/LoRA/VTAB): AdamW, lr 0.005 (also "
                    "tried there: 0.01, 0.001, 5e-4), wd 1e-4, batch 64, 100 epochs; here those four rates as the "
                    "*used* rate at batch 128 (x2 before the batch/256 scaling) and the wd grid around NOAH's 1e-4"),
    config=AdaptConfig,
)
