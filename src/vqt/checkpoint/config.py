"""The one reader of checkpoint configs, for both formats: found, parsed, its format and version checked.

An adapter folder holds `adapter_config.json` (plain VQT, the peft-shaped format), a trained run of any other
method `trained_config.json`. Every caller (loading, `vqt info`, the model card, the Hub, multi-task serving)
reads through `read_config`, so a corrupt, foreign or too-new file is refused with the same one-line error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vqt.checkpoint.files import ADAPTER_CONFIG, FORMATS, TRAINED_CONFIG, config_file
from vqt.errors import AdapterError


def read_config(directory: str | Path, *, verify_weights: bool = False, adapter_only: bool = False) -> dict[str, Any]:
    """The checked config of the checkpoint in `directory` (`method` defaults to "vqt").

    `verify_weights` also checks the weights file against the recorded SHA-256 and records its name under
    `_weights_file`; `adapter_only` refuses a folder that is not in the adapter format.
    """
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG if adapter_only else config_file(directory)
    if path is None or not path.is_file():
        wanted = f"{ADAPTER_CONFIG} not" if adapter_only else f"neither {ADAPTER_CONFIG} nor {TRAINED_CONFIG}"
        raise AdapterError(f"no adapter at {directory}: {wanted} found")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise AdapterError(f"corrupt adapter config {path}: {error}") from error
    weights_name, format_name, newest = FORMATS[path.name]
    if not isinstance(config, dict) or config.get("format", format_name) != format_name:
        raise AdapterError(f"{path} is not a VQT adapter config")
    version = config.get("format_version", 0)
    if isinstance(version, int) and version > newest:
        raise AdapterError(f"{path} was written by a newer vqt (format {version}); upgrade vqt")
    config.setdefault("method", "vqt")
    if verify_weights:
        weights = directory / weights_name
        if not weights.is_file():
            raise AdapterError(f"adapter weights missing: {weights}")
        if hashlib.sha256(weights.read_bytes()).hexdigest() != config.get("weights_sha256"):
            raise AdapterError(f"corrupt adapter weights {weights}: checksum does not match its config")
        config["_weights_file"] = weights.name
    return config


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The checked config of a VQT adapter folder (`adapter_config.json`); other formats are refused."""
    return read_config(directory, adapter_only=True)
