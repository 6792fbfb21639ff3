"""VQT combined with a feature-adapting method: `vqt+adaptformer`, `vqt+lora`, `vqt+vpt-deep`, ...

The adapting method and the queries train jointly. The adapted backbone runs *with* autograd (its adapters must
learn), a forward hook on each block's `norm1` captures that block's normalised input X_l — the adapted tokens,
and with VPT the block's prompts among them — and VQT's own `features_from` runs the query path
(`vqt.backbone.query_path.query_block_output`) on those X_l. The query path reuses the block's modules, so a
LoRA-wrapped qkv or an AdaptFormer MLP acts on the queries too; the ordinary tokens and prompts never see the
queries (they are not in the sequence). The memory cost is the adapting method's plus the query path's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vqt.backbone.query_path import Form
from vqt.backbone.tap import TapOutput, block_inputs
from vqt.methods.spec import MethodGrid, MethodSpec, QueryConfig
from vqt.methods.vqt import VQT, Variant


class QueryCombo(nn.Module):
    """Queries + head of a `VQT` on top of an adapting method's backbone; the method's own head is dropped.

    Args:
        backbone: the timm ViT (adapted in place by `make_adapter`).
        num_classes: classes of the (VQT) head.
        make_adapter: builds the adapting method, e.g. `lambda b, k: LoRA(b, k, rank=8)`; it must expose
            `features(images)` (pre-logits, with autograd), `train(mode)` and a `head` attribute.
        num_queries, variant, query_dropout, form: as for `VQT`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        make_adapter: Callable[[nn.Module, int], nn.Module],
        num_queries: int | Sequence[int] = 1,
        variant: Variant = "concat",
        query_dropout: float = 0.1,
        form: Form = "auto",
    ) -> None:
        super().__init__()
        # VQT first: it freezes the whole backbone; the adapter then adds (or unfreezes) its own parameters.
        self.vqt = VQT(backbone, num_classes, num_queries, variant, query_dropout, form)
        self.adapter = make_adapter(backbone, num_classes)
        self.adapter.head = nn.Identity()  # the VQT head reads [f_final, O_0..O_{L-1}] instead
        self.train()

    @property
    def backbone(self) -> nn.Module:
        return self.vqt.backbone

    @property
    def head(self) -> nn.Linear:
        return self.vqt.head

    def train(self, mode: bool = True) -> QueryCombo:
        """VQT's modes (backbone eval, query dropout), then the adapter's (its dropout, or a fine-tuned backbone)."""
        nn.Module.train(self, mode)
        self.vqt.train(mode)
        self.adapter.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapted_tap(self, images: torch.Tensor) -> TapOutput:
        """X_l of every block and the pre-logits feature of the *adapted* backbone, with autograd."""
        with block_inputs(self.backbone) as tokens:
            pre_logits = self.adapter.features(images)
        return TapOutput(tokens=tokens, pre_logits=pre_logits)

    def query_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """O_l (B, Q_l, D) of every layer, computed on the adapted tokens."""
        return self.vqt.query_outputs(self.adapted_tap(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vqt.features_from(self.adapted_tap(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vqt.head(self.features(images))


def combo_factory(make_adapter: Callable[..., nn.Module],
                  **adapter_kwargs: Any) -> Callable[[nn.Module, int], nn.Module]:
    """A `make_adapter` from a method class and its keyword arguments."""

    def build(backbone: nn.Module, num_classes: int) -> nn.Module:
        return make_adapter(backbone, num_classes, **adapter_kwargs)

    return build


VQT_KWARGS = ("num_queries", "variant", "query_dropout", "form")


def combo_spec(adapter: MethodSpec) -> MethodSpec:
    """`vqt+X`: VQT's queries read the tokens adapter X changes; X's grid (the adapter is the lr-sensitive part)."""

    def build(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
        vqt_kwargs = {k: kwargs.pop(k) for k in VQT_KWARGS if k in kwargs}
        return QueryCombo(backbone, num_classes, combo_factory(adapter.build, **kwargs), **vqt_kwargs)

    grid = MethodGrid(adapter.grid.lrs, adapter.grid.wds, f"the grid of {adapter.name} (no official grid for the "
                      "combination; queries and adapter share one lr)", sure=False)
    return MethodSpec(f"vqt+{adapter.name}", build, "online", True,
                      f"VQT queries on the adapted tokens ({adapter.description})", grid=grid, config=QueryConfig)
