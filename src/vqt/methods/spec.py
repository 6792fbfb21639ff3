"""What the registry knows of a method: how to build it, how it trains, its default grid and its typed config.

`training` decides the protocol's path (`vqt.protocol.fitting`), so no trainer branches on a method's name:
- "store-grid": trains from a feature store, every grid configuration in one pass (VQT, `train_grid`);
- "store-head": only a head on features that never change, read once from the store (linear, Head2Toe);
- "online": changes the backbone's tokens or runs the official autograd, so it trains from images.

Each method's module declares its `SPEC` (as peft's tuners declare their config and model); the registry lists
them, one line per method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

Training = Literal["store-grid", "store-head", "online"]
Builder = Callable[..., nn.Module]

LR_GRID = (1.0, 0.5, 0.25, 0.1, 0.05)  # VQT's official search grid, before the lr x batch/256 scaling
WD_GRID = (0.01, 1e-3, 1e-4, 0.0)
FULL_WD = (0.01, 1e-3, 1e-4, 0.0)  # the weight-decay grid of the adapting methods' official scripts


@dataclass(frozen=True)
class MethodGrid:
    """A method's default lr x weight-decay grid for `vqt sweep` (unscaled lrs: the rate used is lr x batch/256)
    and where it comes from (`sure`: False where the source is our own adaptation)."""

    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    source: str
    sure: bool = True


VQT_GRID = MethodGrid(LR_GRID, WD_GRID, "VQT official scripts (andytu28/VQT): Adam, lr x batch/256")


@dataclass(frozen=True)
class NoConfig:
    """The config of a method with no protocol-level options (its builder takes none)."""

    def kwargs(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class QueryConfig:
    """The options of every query method (VQT, vqt-concat, vqt+X): Q per layer, how a layer's query outputs form
    its feature piece, and dropout on the queries."""

    num_queries: int = 1
    variant: str = "concat"
    query_dropout: float = 0.1

    def __post_init__(self) -> None:
        if int(self.num_queries) < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")

    def kwargs(self) -> dict[str, Any]:
        return {"num_queries": int(self.num_queries), "variant": self.variant,
                "query_dropout": float(self.query_dropout)}


@dataclass(frozen=True)
class AdaptConfig:
    """The option of the adapting methods that change the backbone block by block (VPT-deep, AdaptFormer, LoRA,
    fine-tuning, BitFit): adapt only the last `tuned_layers` blocks (None: all). Fewer tuned blocks is how the
    memory-limited comparison shrinks them to a training-memory budget (`vqt.methods.base.tuned_blocks`)."""

    tuned_layers: int | None = None

    def __post_init__(self) -> None:
        if self.tuned_layers is not None and int(self.tuned_layers) < 1:
            raise ValueError(f"tuned_layers must be >= 1, got {self.tuned_layers}")

    def kwargs(self) -> dict[str, Any]:
        return {} if self.tuned_layers is None else {"tuned_layers": int(self.tuned_layers)}


@dataclass(frozen=True)
class MethodSpec:
    """A method: its builder `(backbone, num_classes, **kwargs) -> nn.Module`, how it trains, its default grid
    and the type of its config."""

    name: str
    build: Builder
    training: Training
    adapts_features: bool
    description: str
    grid: MethodGrid = VQT_GRID
    config: type[NoConfig] | type[QueryConfig] | type[AdaptConfig] = NoConfig

    @property
    def store_trainable(self) -> bool:
        """Trains from a feature store (never runs the backbone in its epochs)."""
        return self.training != "online"

    def kwargs(self, *, queries: int = 1, variant: str = "concat", query_dropout: float = 0.1,
               tuned_layers: int | None = None) -> dict[str, Any]:
        """The builder's keyword arguments from the protocol's options, through the method's typed config."""
        if tuned_layers is not None and self.config is not AdaptConfig:
            raise ValueError(f"method {self.name!r} has no tuned layers to shrink (the adapting methods configured "
                             f"by AdaptConfig have: vpt-deep, adaptformer, lora, finetune, bitfit)")
        if self.config is QueryConfig:
            return QueryConfig(queries, variant, query_dropout).kwargs()
        if self.config is AdaptConfig:
            return AdaptConfig(tuned_layers).kwargs()
        return NoConfig().kwargs()

