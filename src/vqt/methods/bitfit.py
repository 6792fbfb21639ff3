"""BitFit (Ben Zaken et al., ACL 2022): tune only the bias terms of the frozen backbone, plus the head.

Why it is in the harness: the cheapest feature-adapting method by parameter count, yet backward must still run
through every block (the biases sit everywhere), so its activation memory is that of full fine-tuning.
"""

from __future__ import annotations

from torch import nn

from vqt.methods.base import AdaptedBackbone
from vqt.methods.spec import FULL_WD, MethodGrid, MethodSpec


class BitFit(AdaptedBackbone):
    """Frozen ViT whose biases (attention, MLP, norms' shifts, patch embedding) train; `norm_bias` adds LN betas."""

    def __init__(self, backbone: nn.Module, num_classes: int, norm_bias: bool = True) -> None:
        super().__init__(backbone, num_classes)
        for module in backbone.modules():
            bias = getattr(module, "bias", None)
            if not isinstance(bias, nn.Parameter):
                continue
            if isinstance(module, nn.LayerNorm) and not norm_bias:
                continue
            bias.requires_grad_(True)
        if not self.adapter_parameters():
            raise ValueError("BitFit: this backbone has no bias parameters to tune")


SPEC = MethodSpec(
    "bitfit", BitFit, "online", True, "bias-only tuning",
    grid=MethodGrid((0.01, 0.005, 0.001, 5e-4), FULL_WD,
                    "no official VTAB-1k grid found; the range of NOAH's AdamW scripts for parameter-efficient modules "
                    "(1e-3 ... 5e-3 at batch 64) widened to a grid", sure=False),
)
