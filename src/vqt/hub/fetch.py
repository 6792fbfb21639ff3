"""Fetching adapters from the Hugging Face Hub: `hf-hub:OWNER/NAME[@REVISION]` names, download, and the
hub-aware loaders (`load_adapter`, `load_trained`) that resolve a name and then load the folder locally.

A thin use of `huggingface_hub`: `snapshot_download` resolves branches, tags and commits, caches under
`HF_HUB_CACHE`/`HF_HOME`, honours `HF_HUB_OFFLINE` and `HF_TOKEN`. A downloaded adapter is then loaded by
`vqt.checkpoint`, so every local check (backbone, weights checksum, Q) applies unchanged. Problems with the Hub
(no such repository, offline and not cached, not logged in, not an adapter) are one-line `AdapterError`s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqt import DISTRIBUTION
from vqt.checkpoint.files import (
    ADAPTER_CONFIG,
    TRAINED_CONFIG,
    checkpoint_files,
    config_file,
    library_version,
)
from vqt.errors import AdapterError, first_line

if TYPE_CHECKING:
    from torch import nn

    from vqt.methods.vqt import VQT

HUB_PREFIX = "hf-hub:"


def is_hub_id(value: object) -> bool:
    """True for an `hf-hub:OWNER/NAME[@REVISION]` spelling (a str or the Path argparse made of it)."""
    return isinstance(value, (str, Path)) and str(value).startswith(HUB_PREFIX)


def parse_hub_id(value: str | Path) -> tuple[str, str | None]:
    """`hf-hub:owner/name@rev` -> ("owner/name", "rev"); the revision is None when not given."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(value)
    repo_id, at, revision = (text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text).partition("@")
    try:
        if at and not revision:
            raise HFValidationError("empty revision after '@'")
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise AdapterError(f"bad Hub adapter id {text!r} (expected hf-hub:OWNER/NAME or "
                           f"hf-hub:OWNER/NAME@REVISION): {error}") from error
    return repo_id, revision or None


# ---------------------------------------------------------------- errors


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (it changed across versions), plus OS ones."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@contextmanager
def hub_errors(what: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line `AdapterError`s; `what` says what was being done."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        yield
    except AdapterError:
        raise
    except HFValidationError as error:
        raise AdapterError(f"{what}: bad repository id {repo_id!r}: {first_line(error)}") from error
    except RevisionNotFoundError as error:
        raise AdapterError(f"{what}: repository {repo_id!r} has no revision {revision!r}") from error
    except GatedRepoError as error:
        raise AdapterError(f"{what}: {repo_id!r} is gated; accept its conditions on the Hub and {login}") from error
    except RepositoryNotFoundError as error:
        raise AdapterError(f"{what}: no repository {repo_id!r} on the Hugging Face Hub (if it is private, "
                           f"{login})") from error
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE or no connection) and not in the cache
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub cannot be reached"
        raise AdapterError(f"{what}: {reason} and {repo_id}{f'@{revision}' if revision else ''} is not in the "
                           f"local Hugging Face cache ({constants.HF_HUB_CACHE})") from error
    except OfflineModeIsEnabled as error:
        raise AdapterError(f"{what}: HF_HUB_OFFLINE is set; unset it to reach the Hugging Face Hub") from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = f" ({login} with write access)" if status in (401, 403) else ""
        raise AdapterError(f"{what}: {first_line(error)}{hint}") from error
    except _network_errors() as error:
        raise AdapterError(f"{what}: cannot reach the Hugging Face Hub ({first_line(error)})") from error


def download(value: str | Path, *, token: str | bool | None = None) -> Path:
    """The local folder of `hf-hub:OWNER/NAME[@REVISION]` (downloaded, or from the cache), checked to be an adapter."""
    from huggingface_hub import snapshot_download

    repo_id, revision = parse_hub_id(value)
    with hub_errors(f"cannot load {value}", repo_id, revision):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(checkpoint_files()),
                                        library_name=DISTRIBUTION, library_version=library_version(), token=token))
    if config_file(folder) is None:
        raise AdapterError(f"{value} is not a vqt adapter: the repository has neither {ADAPTER_CONFIG} nor "
                           f"{TRAINED_CONFIG}")
    return folder


def local_folder(value: str | Path) -> Path:
    """An adapter folder on disk: `value` itself, or the downloaded `hf-hub:` repository."""
    return download(value) if is_hub_id(value) else Path(value)


def load_adapter(
    directory: str | Path,
    backbone: nn.Module | None = None,
    *,
    num_queries: int | list[int] | None = None,
    check_weights: bool = True,
) -> VQT:
    """Rebuild a trained VQT from a folder or `hf-hub:OWNER/NAME[@REVISION]` (downloaded first, then loaded and
    checked as a folder by `vqt.checkpoint.adapter.load_adapter`)."""
    from vqt.checkpoint.adapter import load_adapter as load_local

    return load_local(local_folder(directory), backbone, num_queries=num_queries, check_weights=check_weights)


def load_trained(directory: str | Path, backbone: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """What `save_trained` wrote, from a folder or `hf-hub:OWNER/NAME[@REVISION]`: (model in eval mode, config)
    (`vqt.checkpoint.trained.load_trained` after the download)."""
    from vqt.checkpoint.trained import load_trained as load_local

    return load_local(local_folder(directory), backbone)
