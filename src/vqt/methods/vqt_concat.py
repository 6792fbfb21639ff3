"""The official-style VQT: queries appended to the token sequence and run through whole blocks.

Kept as a comparison point (benchmarks) and for exact reproduction of the original code's computation. It has
the same parameters, init and feature as `VQT` but runs every block on the concatenation under autograd, so
`backward()` walks the whole backbone and the saved activations grow with every op of every block — the
memory cost docs/design.md §1.4 describes and that `VQT` avoids.
"""

from __future__ import annotations

import torch

from vqt.methods.spec import VQT_GRID, MethodSpec, QueryConfig
from vqt.methods.vqt import VQT, combine_features


class ConcatVQT(VQT):
    """`VQT` computed the original way (masked concatenation, full autograd); same outputs, more memory."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        model = self.backbone
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        outputs = []
        for index, block in enumerate(model.blocks):
            queries = self.layer_queries(index, x.shape[0]).expand(x.shape[0], -1, -1)
            length, total = x.shape[1], x.shape[1] + queries.shape[1]
            allowed = torch.zeros(total, total, dtype=torch.bool, device=x.device)
            allowed[:, :length] = True  # nobody attends to a query, queries attend to ordinary tokens only
            sequence = block(torch.cat([x, queries], dim=1), attn_mask=allowed)
            x, out = sequence[:, :length], sequence[:, length:]
            outputs.append(out)
        pre_logits = model.forward_head(model.norm(x), pre_logits=True)
        return combine_features(pre_logits, outputs, self.variant, self.layer_weights)


SPEC = MethodSpec("vqt-concat", ConcatVQT, "online", False, "VQT computed the official way (full autograd)",
                  grid=VQT_GRID, config=QueryConfig)
