"""Training: the official recipe, the shared epoch loop, one configuration from a store or from images (`trainers`),
the one-pass grid, evaluation, and DDP training (`ddp`)."""

from vqt.training.evaluate import EvalResult, evaluate_store, evaluate_streaming
from vqt.training.grid import GridConfig, GridResult, VQTGrid, grid_configs, train_grid
from vqt.training.loop import History
from vqt.training.recipe import LR_GRID, WD_GRID, Recipe, lr_at_epoch, lr_factor, seed_init
from vqt.training.trainers import train_cached, train_online

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
