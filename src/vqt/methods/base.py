"""What the feature-adapting baselines share: a timm ViT whose chosen parameters train, and a Linear head.

Why one base: fine-tuning, BitFit, LoRA and AdaptFormer differ only in *which* parameters of the backbone train
(and, for the adapters, which modules were added); the head, the feature (the backbone's own pre-logits), the
train/eval behaviour and the parameter bookkeeping are the same, and the VQT combinations need every one of them
to expose `backbone`, `features(images)` and `adapter_parameters()` the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vqt.backbone.tap import check_supported
from vqt.methods.heads import reference_head


def tuned_blocks(backbone: nn.Module, tuned_layers: int | None) -> range:
    """The blocks an adapting method changes: every block (None), else the last `tuned_layers`.

    Why the last ones: blocks before the first adapted block see no trainable parameter and no input that needs a
    gradient, so autograd keeps none of their activations and backward stops there. That is how the paper shrinks
    the adapting baselines to a training-memory budget (its memory-limited comparison)."""
    depth = len(backbone.blocks)
    if tuned_layers is None:
        return range(depth)
    if isinstance(tuned_layers, bool) or not isinstance(tuned_layers, int) or not 1 <= tuned_layers <= depth:
        raise ValueError(f"tuned_layers must be an int from 1 to the backbone's depth {depth}, got {tuned_layers!r}")
    return range(depth - tuned_layers, depth)


def count_trainable(module: nn.Module) -> int:
    """Number of scalars that receive gradients (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class AdaptedBackbone(nn.Module):
    """A timm ViT + head where only `adapter_parameters()` (and the head) train.

    Subclasses modify the backbone in `__init__` (inject modules, unfreeze biases, ...) and list the modules that
    must run in training mode in `_adapter_modules` (dropout inside adapters). The frozen rest of the backbone
    stays in eval mode, as VQT's does, unless `backbone_train_mode` (full fine-tuning).
    """

    backbone_train_mode: bool = False

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        check_supported(backbone)
        self.backbone = backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        self.head = reference_head(int(backbone.embed_dim), num_classes)
        self._adapter_modules: list[nn.Module] = []

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The backbone-side trainable parameters (not the head)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _unfreeze(self, parameters: Iterable[nn.Parameter]) -> None:
        for parameter in parameters:
            parameter.requires_grad_(True)

    def train(self, mode: bool = True) -> AdaptedBackbone:
        super().train(mode)
        if not self.backbone_train_mode:
            self.backbone.eval()
            for module in self._adapter_modules:
                module.train(mode)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The (adapted) backbone's own pre-logits feature, with autograd."""
        model = self.backbone
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
