"""docs/design.md §2 compression of a trained VQT: keep a fraction of the head's input features."""

from __future__ import annotations

import copy

from torch import nn

from vqt.features import FeatureStore
from vqt.methods.feature_selection import select_and_refit
from vqt.protocol.evaluation import store_features


def compress(
    model: nn.Module,
    train_store: FeatureStore,
    *,
    keep_fraction: float,
    lr: float,
    weight_decay: float,
    epochs: int,
    group_lasso: float = 1e-4,
    seed: int = 0,
) -> nn.Module:
    """docs/design.md §2 compression: queries frozen, a group-lasso head ranks the features, a fresh head on the kept.

    `lr` is the effective lr of the chosen configuration; the group-lasso selection head and the fresh head on the
    kept features both train at half of it (the reference notes give the half for the selection; the fresh head's
    rate is not stated there, and this keeps the one rate the selection used).
    """
    features, labels = store_features(model, train_store)
    head = select_and_refit(
        features, labels, model.head.out_features if isinstance(model.head, nn.Linear) else model.head.linear.out_features,
        keep_fraction=keep_fraction, group_lasso=group_lasso, epochs=epochs, lr=lr / 2,
        weight_decay=weight_decay, seed=seed,
    )
    compressed = copy.copy(model)
    compressed._modules = dict(model._modules)
    compressed.head = head.to(features.device)
    return compressed.eval()
