"""What a feature store is made from — the request it is checked against when reused.

One value travels from the protocol to the extraction and the metadata (rather than a dozen keyword arguments):
the backbone's spelling and weights fingerprint, the input transform, the split, the storage dtype and the
compute precision of the backbone pass. `meta(backbone, count)` is the metadata a store of this request has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from vqt.backbone.sources import describe, weights_fingerprint
from vqt.backbone.tap import BackboneTap
from vqt.features.store import store_meta


@dataclass(frozen=True)
class StoreRequest:
    """A feature store's request. `fingerprint` is the backbone's `weights_fingerprint` when the caller has it
    (hashing a large backbone's weights takes a moment; the protocol checks several stores against one)."""

    backbone_spec: str
    transform: Mapping[str, Any]
    dataset_meta: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float16"
    precision: str = "fp32"
    fingerprint: str | None = None

    def for_split(self, dataset_meta: Mapping[str, Any]) -> StoreRequest:
        """The same request for another split (its own `dataset_meta`)."""
        return replace(self, dataset_meta=dict(dataset_meta))

    def with_fingerprint(self, backbone_or_tap: nn.Module) -> StoreRequest:
        """This request with the backbone's fingerprint computed once (kept when already set)."""
        if self.fingerprint is not None:
            return self
        return replace(self, fingerprint=weights_fingerprint(_model(backbone_or_tap)))

    def meta(self, backbone_or_tap: nn.Module, count: int) -> dict[str, Any]:
        """The metadata a store of this request over `count` images has (pass it as `expect` to `open_store`).

        `precision` is the resolved compute precision of the backbone pass ('fp32' or 'bf16'): recorded and
        compared, since bf16 features differ from fp32 ones (the storage `dtype` is a separate field)."""
        model = _model(backbone_or_tap)
        architecture = describe(model)
        return store_meta(
            backbone_spec=self.backbone_spec,
            weights_sha256=self.fingerprint or weights_fingerprint(model),
            architecture=architecture,
            img_size=architecture["img_size"],
            transform=self.transform,
            dataset_meta=self.dataset_meta,
            count=count,
            dtype=self.dtype,
            num_tokens=num_tokens(model),
            precision=self.precision,
        )


def num_tokens(model: nn.Module) -> int:
    """N, the ordinary tokens a block sees: prefix tokens (CLS, registers) plus patches."""
    return int(model.patch_embed.num_patches) + int(model.num_prefix_tokens)


def _model(backbone_or_tap: nn.Module) -> nn.Module:
    return backbone_or_tap.model if isinstance(backbone_or_tap, BackboneTap) else backbone_or_tap
