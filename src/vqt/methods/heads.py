"""The one classification-head initialisation every method shares (the official VQT code's): kaiming-normal
(fan_out) weights, bias -log(0.99/0.01) so every class starts at probability ~0.01."""

from __future__ import annotations

import math

from torch import nn

HEAD_BIAS_INIT = -math.log((1 - 0.01) / 0.01)  # reference head bias, -4.595


def init_head(head: nn.Linear) -> nn.Linear:
    """(Re)initialise `head` in place the reference way; returns it."""
    nn.init.kaiming_normal_(head.weight, mode="fan_out")
    nn.init.constant_(head.bias, HEAD_BIAS_INIT)
    return head


def reference_head(in_features: int, num_classes: int) -> nn.Linear:
    """A new head of the reference initialisation."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return init_head(nn.Linear(in_features, num_classes))
