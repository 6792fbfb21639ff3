"""Pushing an adapter folder to the Hugging Face Hub: `HfApi.create_repo` + `HfApi.upload_folder`, with a
generated model card, and `save_adapter(..., push_to_hub=...)` that saves locally and then pushes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqt import DISTRIBUTION
from vqt.checkpoint.config import read_config
from vqt.checkpoint.files import checkpoint_files, library_version
from vqt.errors import AdapterError
from vqt.hub.card import write_model_card
from vqt.hub.fetch import hub_errors, parse_hub_id

if TYPE_CHECKING:
    from vqt.methods.vqt import VQT


def push_to_hub(directory: str | Path, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                commit_message: str | None = None) -> str:
    """Upload an adapter folder (either format) and its model card to the Hub repository `repo_id`; the URL.

    The repository is created when missing; only the adapter's files are uploaded, and adapter files of another
    format left in the repository by an earlier push are deleted in the same commit.
    """
    from huggingface_hub import HfApi

    directory = Path(directory)
    repo_id, revision = parse_hub_id(repo_id)
    if revision:
        raise AdapterError(f"push goes to the main branch of a repository: give {repo_id}, without @{revision}")
    config = read_config(directory, verify_weights=True)
    api = HfApi(library_name=DISTRIBUTION, library_version=library_version(), token=token)
    files = list(checkpoint_files())
    with hub_errors(f"cannot push {directory} to {repo_id}", repo_id):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id  # `name` alone: created under the user's namespace
        write_model_card(directory, repo_id, config)
        api.upload_folder(repo_id=repo_id, folder_path=directory, allow_patterns=files, delete_patterns=files,
                          commit_message=commit_message or f"vqt {library_version()}: {config.get('method', 'vqt')} "
                          f"adapter for {config.get('task') or 'a task'} on {config.get('backbone')}")
    return f"https://huggingface.co/{repo_id}"


_upload = push_to_hub  # `save_adapter`'s keyword of the same name shadows it there


def save_adapter(
    model: VQT,
    directory: str | Path,
    *,
    backbone_spec: str,
    transform: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Save queries + head + config (`vqt.checkpoint.adapter.save_adapter`); `push_to_hub="owner/name"` then
    uploads the folder with a generated model card (`push_to_hub`)."""
    from vqt.checkpoint.adapter import save_adapter as save_local

    directory = save_local(model, directory, backbone_spec=backbone_spec, transform=transform,
                           class_names=class_names, extra=extra)
    if push_to_hub:
        _upload(directory, push_to_hub)
    return directory
