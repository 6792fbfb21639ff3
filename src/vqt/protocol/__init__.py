"""The VTAB-1k protocol runner behind `vqt train / sweep / eval / predict / extract`, usable from Python."""

from vqt.checkpoint.trained import load_trained, save_trained
from vqt.protocol.predict import evaluate_adapter, predict
from vqt.protocol.single import TRAIN_DEFAULTS, run_train
from vqt.protocol.sweep import SWEEP_DEFAULTS, Sweep, run_sweep

__all__ = [
    "SWEEP_DEFAULTS",
    "TRAIN_DEFAULTS",
    "Sweep",
    "evaluate_adapter",
    "load_trained",
    "predict",
    "run_sweep",
    "run_train",
    "save_trained",
]
