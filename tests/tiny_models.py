"""Tiny random timm ViTs of the families VQT must handle, and a plain reference VQT written the obvious way."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

COMMON = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=0, mlp_ratio=2.0)

FAMILIES: dict[str, dict] = {
    "plain_cls": dict(qkv_bias=True),
    "mae_avgpool": dict(global_pool="avg", fc_norm=True),
    "dinov2_ls_reg": dict(init_values=0.5, reg_tokens=2, no_embed_class=True),
    "clip_norm_pre": dict(pre_norm=True, qkv_bias=True),
    "qknorm_scalenorm_gate": dict(qk_norm=True, scale_attn_norm=True, scale_mlp_norm=True),
}


def tiny_vit(family: str = "plain_cls", seed: int = 0, dtype: torch.dtype = torch.float32) -> VisionTransformer:
    """A frozen random ViT whose every parameter (norms included) is perturbed, so no module is a no-op."""
    torch.manual_seed(seed)
    model = VisionTransformer(**{**COMMON, **FAMILIES[family]})
    if family == "qknorm_scalenorm_gate":
        for block in model.blocks:
            block.attn.gate = nn.Linear(COMMON["embed_dim"], COMMON["embed_dim"], bias=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model = model.to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def masked_block(block: nn.Module, seq: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A timm Block on a sequence with a boolean attention mask (True = may attend), written out plainly."""
    attn = block.attn
    batch, length, _ = seq.shape
    h = block.norm1(seq)
    qkv = attn.qkv(h).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, attn.attn_dim)
    out = attn.norm(out)
    if attn.gate is not None:
        out = out * attn.gate(h).sigmoid()
    seq = seq + block.ls1(attn.proj(out))
    return seq + block.ls2(block.mlp(block.norm2(seq)))


def reference_vqt(
    model: VisionTransformer, queries: list[torch.Tensor], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Official-style VQT: queries appended to the sequence, masked, everything under ordinary autograd.

    Returns the concat feature, the backbone's final tokens, and the per-layer query outputs.
    """
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    outputs = []
    for block, layer_queries in zip(model.blocks, queries, strict=True):
        n, q = x.shape[1], layer_queries.shape[0]
        allowed = torch.zeros(n + q, n + q, dtype=torch.bool)
        allowed[:, :n] = True  # every row sees the ordinary tokens; no row sees a query (not even itself)
        seq = torch.cat([x, layer_queries.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        seq = masked_block(block, seq, allowed)
        x, out = seq[:, :n], seq[:, n:]
        outputs.append(out)
    final = model.norm(x)
    pre_logits = model.forward_head(final, pre_logits=True)
    pieces = [pre_logits] + [o.flatten(1) for o in outputs]
    feature = torch.cat([F.normalize(p, dim=-1, eps=1e-12) for p in pieces], dim=-1)
    return feature, final, outputs
