"""Head2Toe-style group-lasso feature selection, shared by Head2Toe and VQT's `--compress` step.

Why group lasso: a penalty `lam * sum_j ||W[:, j]||_2` on the head weight drives whole input columns (features) to
zero together across classes, so a column's norm after training ranks how much the head relies on that feature.
Keep the top fraction of columns and train a fresh head on them (docs/design.md §2, "Compression").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vqt.methods.heads import init_head


def group_lasso_penalty(weight: torch.Tensor) -> torch.Tensor:
    """sum_j ||W[:, j]||_2 over the input columns of a Linear weight (out, in); multiply by lambda outside."""
    return weight.norm(dim=0).sum()


def num_kept(num_features: int, keep_fraction: float) -> int:
    """How many features a keep fraction keeps: ceil(fraction * count), at least one."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    return max(1, min(num_features, math.ceil(keep_fraction * num_features)))


def select_features(weight: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Indices (sorted ascending) of the columns with the largest L2 norm: the features to keep."""
    norms = weight.detach().norm(dim=0)
    keep = num_kept(norms.numel(), keep_fraction)
    return norms.topk(keep).indices.sort().values


class SelectedHead(nn.Module):
    """A Linear head reading only the kept features (indices stored as a buffer, so they save and load)."""

    def __init__(self, indices: torch.Tensor, num_classes: int, reference_init: bool = True) -> None:
        super().__init__()
        self.register_buffer("indices", indices.clone().long())
        self.linear = nn.Linear(int(indices.numel()), num_classes)
        if reference_init:
            init_head(self.linear)

    @property
    def weight(self) -> torch.Tensor:
        """The Linear weight (trainers read `head.weight` for device and dtype)."""
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.index_select(-1, self.indices))


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    group_lasso: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    lr_factor: Callable[[int], float] | None = None,
) -> nn.Module:
    """Train a head on in-memory features with Adam (+ optional group lasso on its Linear weight); small tasks.

    `weight_decay` is coupled L2 on the weight only (the bias is exempt, as in the official optimiser).
    `lr_factor(epoch)` multiplies `lr` in each (0-based) epoch: the protocol passes the recipe's warm-up + cosine,
    which the official compression trainer also uses; without it the rate is constant, and at a high lr the last
    iterate of a constant rate is noisy (one seed of a compressed Head2Toe fell to 39 % where its uncompressed
    head, trained on the schedule, scored 94 %). Kept here so Head2Toe and the compression step need no trainer;
    the training package's grid trainer is the tool for full VTAB runs.
    """
    generator = torch.Generator().manual_seed(seed)
    linear = head.linear if isinstance(head, SelectedHead) else head
    decayed = [p for p in head.parameters() if p is not linear.bias]
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if linear.bias is not None:
        groups.append({"params": [linear.bias], "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups, lr=lr)
    count = features.shape[0]
    head.train()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1.0 if lr_factor is None else lr_factor(epoch))
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(head(features[index]), labels[index])
            if group_lasso > 0:
                loss = loss + group_lasso * group_lasso_penalty(linear.weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


def select_and_refit(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    keep_fraction: float,
    group_lasso: float = 1e-4,
    epochs: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    lr_factor: Callable[[int], float] | None = None,
) -> SelectedHead:
    """The whole recipe: a group-lasso head on all features, rank columns, a fresh head on the kept ones.

    Both heads start from the reference initialisation and train alike (`lr`, `weight_decay`, `lr_factor`: see
    `fit_linear_head`), as the official compression runs both phases through one trainer and solver config; the
    first adds the group lasso. `seed` fixes their initialisation and batch order without touching the global
    random stream (a library call must not reseed the caller's RNG).
    """
    train = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "seed": seed, "lr_factor": lr_factor}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = init_head(nn.Linear(features.shape[1], num_classes))
        fit_linear_head(features, labels, probe, group_lasso=group_lasso, **train)
        head = SelectedHead(select_features(probe.weight, keep_fraction), num_classes)
    return fit_linear_head(features, labels, head, **train)
