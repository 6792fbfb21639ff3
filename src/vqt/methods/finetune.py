"""Full fine-tuning: every backbone weight trains (the upper reference for memory and, often, accuracy).

The usual recipe is AdamW with the backbone in training mode; `param_groups` offers layer-wise lr decay
(BEiT/MAE style: block l gets lr * decay^(L - l), the embeddings decay^(L+1)) and no weight decay on biases,
norms, tokens and position embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vqt.methods.base import AdaptedBackbone, tuned_blocks
from vqt.methods.spec import FULL_WD, AdaptConfig, MethodGrid, MethodSpec

NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "gamma")


class FineTune(AdaptedBackbone):
    """All backbone parameters + head train; the backbone follows `train()`/`eval()` (dropout, drop-path).

    `tuned_layers`: only the last that many blocks and the final norm train (`tuned_blocks`; None or the depth:
    everything)."""

    backbone_train_mode = True

    def __init__(self, backbone: nn.Module, num_classes: int, tuned_layers: int | None = None) -> None:
        super().__init__(backbone, num_classes)
        blocks = tuned_blocks(backbone, tuned_layers)
        if blocks.start == 0:  # every block: everything, embeddings included
            self._unfreeze(backbone.parameters())
        else:  # the last blocks and what follows them (final norm); embeddings and earlier blocks stay frozen
            for index in blocks:
                self._unfreeze(backbone.blocks[index].parameters())
            for name in ("norm", "fc_norm"):
                module = getattr(backbone, name, None)
                if isinstance(module, nn.Module):
                    self._unfreeze(module.parameters())

    def layer_id(self, name: str) -> int:
        """0 for embeddings, l+1 for block l, L+1 for the final norm and the head."""
        depth = len(self.backbone.blocks)
        if name.startswith("backbone.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith("backbone.") and not name.startswith(("backbone.norm", "backbone.fc_norm")):
            return 0
        return depth + 1

    def param_groups(
        self, lr: float, weight_decay: float = 0.05, layer_decay: float = 1.0
    ) -> list[dict[str, Any]]:
        """AdamW groups: layer-wise lr scale (1.0 = off) and no decay on 1-d params and tokens."""
        depth = len(self.backbone.blocks)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = self.layer_id(name)
            no_decay = parameter.ndim <= 1 or any(key in name for key in NO_DECAY_NAMES)
            key = (layer, no_decay)
            if key not in groups:
                scale = layer_decay ** (depth + 1 - layer)
                groups[key] = {
                    "params": [],
                    "lr": lr * scale,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr_scale": scale,
                }
            groups[key]["params"].append(parameter)
        return list(groups.values())

    def optimizer(self, lr: float = 1e-4, weight_decay: float = 0.05, layer_decay: float = 1.0) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.param_groups(lr, weight_decay, layer_decay), lr=lr)


SPEC = MethodSpec(
    "finetune", FineTune, "online", True, "full fine-tuning of every backbone weight",
    grid=MethodGrid((0.005, 0.001, 5e-4, 1e-4), FULL_WD,
                    "VPT official code (KMnP/vpt tune_vtab.py, train_type 'finetune'; configs/base-finetune.yaml: "
                    "AdamW, 5 warm-up epochs), lr x batch/256 as there; we keep Adam with coupled decay and "
                    "--warmup-epochs"),
    config=AdaptConfig,
)
