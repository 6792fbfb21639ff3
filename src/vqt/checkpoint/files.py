"""The file names and format versions of what vqt writes, and the library version recorded in each.

A leaf module (it imports nothing of vqt's at import time): feature stores, adapters, trained runs and the Hub
layer all name their files from here, so a new file of the format is added in one place.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_FORMAT = "vqt-adapter"
ADAPTER_FORMAT_VERSION = 1

TRAINED_CONFIG = "trained_config.json"
TRAINED_WEIGHTS = "trained.safetensors"
TRAINED_FORMAT = "vqt-trained"
TRAINED_FORMAT_VERSION = 1

CARD_NAME = "README.md"  # the model card, for the Hub

# config file -> (its weights file, the format it must declare, the newest version this vqt reads)
FORMATS: dict[str, tuple[str, str, int]] = {
    ADAPTER_CONFIG: (ADAPTER_WEIGHTS, ADAPTER_FORMAT, ADAPTER_FORMAT_VERSION),
    TRAINED_CONFIG: (TRAINED_WEIGHTS, TRAINED_FORMAT, TRAINED_FORMAT_VERSION),
}


def checkpoint_files() -> tuple[str, ...]:
    """Every file of a checkpoint folder that travels with it (to and from the Hub): both formats and the card."""
    return (ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAINED_CONFIG, TRAINED_WEIGHTS, CARD_NAME)


def config_file(directory: str | Path) -> Path | None:
    """The config file of the checkpoint in `directory` (the adapter format first), None when there is none."""
    for name in FORMATS:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def library_version() -> str:
    """The installed `visual-query-tuning` version (`vqt.__version__`), recorded in adapters, stores and runs."""
    import vqt

    return vqt.__version__
