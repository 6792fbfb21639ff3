"""Training: the official recipe, cached (store) and online trainers, the one-pass grid, streaming evaluation."""

from vqt.training.cached import History, evaluate_store, train_cached, train_online
from vqt.training.evaluate import EvalResult, evaluate_streaming
from vqt.training.grid import GridConfig, GridResult, VQTGrid, grid_configs, train_grid
from vqt.training.recipe import LR_GRID, WD_GRID, Recipe, lr_at_epoch, lr_factor, seed_init

__all__ = [
    "LR_GRID",
    "WD_GRID",
    "EvalResult",
    "GridConfig",
    "GridResult",
    "History",
    "Recipe",
    "VQTGrid",
    "evaluate_store",
    "evaluate_streaming",
    "grid_configs",
    "lr_at_epoch",
    "lr_factor",
    "seed_init",
    "train_cached",
    "train_grid",
    "train_online",
]
