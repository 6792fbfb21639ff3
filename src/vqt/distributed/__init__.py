"""Running `vqt` under torchrun (several processes, GPUs or nodes): see docs/distributed.md.

`context` says which rank this process is and holds the collectives every command needs (barrier with a
deadline, comparing arguments, rank-aware printing and progress bars).
"""

from vqt.distributed.context import (
    DistContext,
    DistributedError,
    all_gather_object,
    barrier,
    current,
    init_from_env,
    main_print,
    progress_enabled,
    rank_device,
)

__all__ = ["DistContext", "DistributedError", "all_gather_object", "barrier", "current", "init_from_env",
           "main_print", "progress_enabled", "rank_device"]
