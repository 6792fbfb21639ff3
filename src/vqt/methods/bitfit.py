"""BitFit (Ben Zaken et al., ACL 2022): tune only the bias terms of the frozen backbone, plus the head.

Why it is in the harness: the cheapest feature-adapting method by parameter count, yet backward must still run
through every block (the biases sit everywhere), so its activation memory is that of full fine-tuning.
"""

from __future__ import annotations

from torch import nn

from vqt.methods.base import AdaptedBackbone, tuned_blocks
from vqt.methods.spec import FULL_WD, AdaptConfig, MethodGrid, MethodSpec


class BitFit(AdaptedBackbone):
    """Frozen ViT whose biases (attention, MLP, norms' shifts, patch embedding) train; `norm_bias` adds LN betas.

    `tuned_layers`: only the last that many blocks' biases and the final norm's (`tuned_blocks`; None: all)."""

    def __init__(self, backbone: nn.Module, num_classes: int, norm_bias: bool = True,
                 tuned_layers: int | None = None) -> None:
        super().__init__(backbone, num_classes)
        blocks = tuned_blocks(backbone, tuned_layers)
        if blocks.start == 0:  # every block: every bias, the patch embedding's included
            modules = list(backbone.modules())
        else:  # the last blocks' biases and the final norm's; the patch embedding's stays frozen
            modules = [m for index in blocks for m in backbone.blocks[index].modules()]
            modules += [m for name in ("norm", "fc_norm") if isinstance(getattr(backbone, name, None), nn.Module)
                        for m in getattr(backbone, name).modules()]
        for module in modules:
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
    config=AdaptConfig,
)
