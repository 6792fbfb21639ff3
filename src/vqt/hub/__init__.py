"""Adapters on the Hugging Face Hub, a layer on top of `vqt.checkpoint`: `hf-hub:OWNER/NAME[@REVISION]`, a
generated model card, push and download.

A thin use of `huggingface_hub`'s own API: `HfApi.create_repo` + `HfApi.upload_folder` to push, `snapshot_download`
to fetch (it resolves branches, tags and commits, caches under `HF_HUB_CACHE`/`HF_HOME`, honours `HF_HUB_OFFLINE`
and `HF_TOKEN`). A downloaded adapter is then loaded by the local loader, so every local check (backbone, weights
checksum, Q) applies unchanged. Problems with the Hub (no such repository, offline and not cached, not logged in,
not an adapter) are one-line `AdapterError`s.

The model card (`README.md`, written into the adapter folder before it is uploaded) says what the adapter is for:
backbone spelling and base model, task, classes, accuracy when the run recorded one, Q, trainable parameters and
how to load it with vqt. A card whose marker line was removed is the user's own and is uploaded as it is.
"""

from vqt.hub.card import CARD_MARKER, model_card, write_model_card
from vqt.hub.fetch import (
           HUB_PREFIX,
           download,
           is_hub_id,
           load_adapter,
           load_trained,
           local_folder,
           parse_hub_id,
)
from vqt.hub.push import push_to_hub, save_adapter

__all__ = ["CARD_MARKER", "HUB_PREFIX", "download", "is_hub_id", "load_adapter", "load_trained", "local_folder",
           "model_card", "parse_hub_id", "push_to_hub", "save_adapter", "write_model_card"]
