"""BitFit (Ben Zaken et al., ACL 2022): tune only the bias terms of the frozen backbone, plus the head.

Why it is in the harness: the cheapest feature-adapting method by parameter count, yet backward must still run
through every block (the biases sit everywhere), so its activation memory is that of full fine-tuning.
"""

from __future__ import annotations

from torch import nn

from vqt.methods.base import AdaptedBackbone


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
