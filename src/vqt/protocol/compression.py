"""docs/design.md §2 compression of a trained VQT: keep a fraction of the head's input features."""

from __future__ import annotations

import copy
from functools import partial

from torch import nn

from vqt.data.registry import COMPRESSION_KEEP
from vqt.data.tasks import OTHER_GROUP, TaskSpec
from vqt.errors import VQTError
from vqt.features import FeatureStore
from vqt.methods.feature_selection import select_and_refit
from vqt.protocol.accuracy import shared_store_features
from vqt.training.recipe import lr_factor

HEAD_LR_FRACTION = 0.5  # both compression heads train at this fraction of the chosen effective lr (see `compress`)


def keep_fraction(spec: float | str | None, task: TaskSpec) -> float | None:
    """The fraction of features `--compress spec` keeps on `task` (None: not compressed).

    'official' is the paper's per-task rule for the VTAB-1k tasks (0.7 on its Q=1 tasks, none on the others); a
    task outside that registry has no such rule, so 'official' there is refused instead of silently doing nothing.
    """
    if spec is None:
        return None
    if spec != "official":
        return float(spec)
    if task.group == OTHER_GROUP:
        raise VQTError(f"--compress official is the paper's per-task rule for the VTAB-1k tasks; {task.name!r} is "
                       f"not one of them: give the fraction of features to keep (e.g. --compress "
                       f"{COMPRESSION_KEEP}) or drop --compress")
    return COMPRESSION_KEEP if task.official_compress else None


def compress(
    model: nn.Module,
    train_store: FeatureStore,
    *,
    keep_fraction: float,
    lr: float,
    weight_decay: float,
    epochs: int,
    warmup_epochs: int,
    group_lasso: float = 1e-4,
    seed: int = 0,
    feature_cache: dict | None = None,
) -> nn.Module:
    """docs/design.md §2 compression: queries frozen, a group-lasso head ranks the features, a fresh head on the kept.

    `lr` is the effective lr of the chosen configuration; the group-lasso selection head and the fresh head on the
    kept features both train at half of it (the reference notes give the half for the selection; the fresh head's
    rate is not stated there, and this keeps the one rate the selection used). Both follow the recipe's schedule
    (`warmup_epochs` linear warm-up, then a half cosine over `epochs`), as the official compression trainer does with
    the solver config of the run it compresses. `feature_cache`: see `shared_store_features` (Head2Toe's seeds share
    their training features).
    """
    features, labels = shared_store_features(model, train_store, feature_cache)
    head = select_and_refit(
        features, labels,
        model.head.out_features if isinstance(model.head, nn.Linear) else model.head.linear.out_features,
        keep_fraction=keep_fraction, group_lasso=group_lasso, epochs=epochs, lr=lr * HEAD_LR_FRACTION,
        weight_decay=weight_decay, seed=seed,
        lr_factor=partial(lr_factor, epochs=epochs, warmup_epochs=warmup_epochs),
    )
    compressed = copy.copy(model)
    compressed._modules = dict(model._modules)
    compressed.head = head.to(features.device)
    return compressed.eval()
