"""Independent random streams from one seed: a configuration's query-dropout masks, its data order and VQT's
embedding-dropout masks each come from their own CPU generator, so turning one on never shifts another."""

from __future__ import annotations

import torch


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The CPU generator of stream `stream` (a fixed constant per use) for configuration seed `seed`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % (2**63))
