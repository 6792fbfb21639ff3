"""Running `vqt` under torchrun (several processes, GPUs or nodes): see docs/distributed.md.

`vqt.distributed.context` says which rank this process is and holds the collectives every command needs (barrier
with a deadline, comparing arguments, rank-aware printing and progress bars). This package module itself imports
nothing heavy, so the CLI can ask `launched_by_torchrun()` without importing torch.
"""

import os

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True when the environment carries a launcher's rank variables (torchrun, or the same set by hand)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)
