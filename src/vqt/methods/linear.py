"""Linear probing: a Linear head on the frozen backbone's own pre-logits feature.

Store-trainable: the feature is `TapOutput.pre_logits`, which the feature store keeps, so training never runs
the backbone. Same head init as VQT, so the two differ only in the queries' extra feature pieces.
"""

from __future__ import annotations

import torch
from torch import nn

from vqt.backbone.tap import BackboneTap, TapOutput
from vqt.methods.heads import reference_head
from vqt.methods.spec import LR_GRID, WD_GRID, MethodGrid, MethodSpec


class LinearProbe(nn.Module):
    """Frozen ViT + Linear head on pre-logits. `features_from` takes a tap output or store batch."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.tap = BackboneTap(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        self.head = reference_head(self.tap.embed_dim, num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.tap.model

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.tap.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def features_from(self, tapped: TapOutput) -> torch.Tensor:
        return tapped.pre_logits.to(self.head.weight.dtype)

    def feature_key(self) -> tuple:
        """The features are the frozen backbone's pre-logits: models on one backbone share them (see Head2Toe)."""
        return ("linear", id(self.backbone))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_from(self.tap(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


SPEC = MethodSpec(
    "linear", LinearProbe, "store-head", False, "Linear head on the pre-logits feature",
    grid=MethodGrid(LR_GRID, WD_GRID, "the VQT grid (the repository's linear-probing baseline shares the VQT recipe; "
                    "VPT's SGD grid for linear probing, {50 ... 0.05}, does not transfer to Adam)", sure=False),
)
