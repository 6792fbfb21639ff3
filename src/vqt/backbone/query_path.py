"""The query path: a block's output at the query rows, from its queries P_l and its frozen tokens X_l.

This is the one place the VQT math lives; the online model, the feature-store trainer, the hyper-parameter grid
and the feature-adapting combinations all call `query_block_output`. It reuses the block's own modules (norm1,
qkv, q_norm/k_norm, scale-norm, gate, proj, LayerScale, norm2, MLP), so every timm variant the tap accepts is
handled by the same code. Semantics (docs/design.md §1.1): the queries' keys and values come from X_l only; a query does
not attend to itself or to other queries; the ordinary tokens never see the queries.

Two exact forms of the attention:
- "recompute": K, V = X_l W_k^T + b_k, X_l W_v^T + b_v, then ordinary attention. Needed with qk-norm or a
  wrapped (e.g. LoRA) qkv; cheaper once queries x configurations exceed the head dimension.
- "absorbed": logits = (W_k,h^T q_h) . x_i (the q_h . b_k term is constant over i and cancels in the softmax),
  output = W_v,h (sum_i a_i x_i) + b_v,h. Autograd then saves X_l once instead of K and V: half the memory.

The recompute form runs through `scaled_dot_product_attention` (q carries the scale, so SDPA's is 1) unless the
attention weights are asked for: exact, and the fused kernels save no (H, Q, N) weights for backward (head_dim < N).
The absorbed form keeps the explicit softmax: its one "head" is D wide, and D > N makes SDPA's saved output the
larger tensor.

Under `torch.autocast` (bf16/fp16) a frozen block's weights would be recast to the low dtype by every matmul of
every step, and autograd would save those casts (about 8 D^2 values per layer per step, whatever the batch). A
frozen fp32/fp64 block is therefore copied to the autocast dtype once (`compute_block`) and the query path runs
on that copy: no weight is recast or saved per step. The copy is rebuilt only when the block's weights change.
"""

from __future__ import annotations

import copy
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Form = Literal["auto", "absorbed", "recompute"]


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype `torch.autocast` computes matmuls in on `device`'s type, or None when autocast is off there."""
    try:  # torch >= 2.4 takes the device type
        enabled, dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
    except TypeError:  # torch 2.3: one function pair per device type
        cpu = device.type == "cpu"
        enabled = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        dtype = torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
    return dtype if enabled else None


# block -> (what the copy was made from, the copy); weak, so a dropped backbone takes its copies with it.
_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _weights_key(block: nn.Module, dtype: torch.dtype) -> tuple:
    """Identifies a block's current weights: storage, in-place version (bumped by `copy_`, `load_state_dict`)."""
    return (dtype, *((p.device, p.data_ptr(), p._version, p.dtype) for p in block.parameters()))


def compute_block(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`block` with its weights in `dtype`, copied once and reused while the block's weights are unchanged.

    Only a frozen block of a wider float dtype is copied; a block with trainable weights (LoRA, AdaptFormer,
    fine-tuning combinations) must be differentiated through its own weights and is returned as it is.
    """
    parameters = list(block.parameters())
    if (not parameters or any(p.requires_grad for p in parameters)
            or parameters[0].dtype not in (torch.float32, torch.float64) or parameters[0].dtype == dtype):
        return block
    key = _weights_key(block, dtype)
    cached = _COPIES.get(block)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, copy.deepcopy(block).to(dtype))
        _COPIES[block] = cached
    return cached[1]


def compute_copies(module: nn.Module) -> list[nn.Module]:
    """The low-precision copies `compute_block` holds for `module`'s blocks (persistent, not per-step memory)."""
    return [cached[1] for sub in module.modules() if (cached := _COPIES.get(sub)) is not None]


def _plain_qkv(attn: nn.Module) -> bool:
    return type(attn.qkv) is nn.Linear


def choose_form(block: nn.Module, num_queries: int) -> Literal["absorbed", "recompute"]:
    """Absorbed while it is valid and cheaper: no key norm, a plain qkv Linear, fewer queries than head_dim."""
    attn = block.attn
    valid = isinstance(attn.k_norm, nn.Identity) and _plain_qkv(attn)
    return "absorbed" if valid and num_queries < attn.head_dim else "recompute"


def _project_queries(block: nn.Module, normed_queries: torch.Tensor) -> torch.Tensor:
    """q = W_q norm1(P) + b_q, split into heads, q-normed and scaled: (b, H, Q, d)."""
    attn = block.attn
    width = attn.attn_dim
    if _plain_qkv(attn):
        bias = attn.qkv.bias[:width] if attn.qkv.bias is not None else None
        q = F.linear(normed_queries, attn.qkv.weight[:width], bias)
    else:  # a wrapped projection (e.g. LoRA): call it and keep the query third
        q = attn.qkv(normed_queries)[..., :width]
    b, num_queries, _ = normed_queries.shape
    q = q.view(b, num_queries, attn.num_heads, attn.head_dim).transpose(1, 2)
    return attn.q_norm(q) * attn.scale


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T) v, with q already scaled. Without the weights, through `scaled_dot_product_attention`.

    SDPA computes the same sum (flash / memory-efficient kernels on CUDA, the flash CPU kernel here) and saves
    no (Q, N) weight matrix for backward; the explicit form is kept for callers that read the weights (viz).
    """
    if need_weights:
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return weights @ v, weights
    if q.shape[0] != k.shape[0]:  # queries shared by every image: the fused kernels want equal batch sizes
        q = q.expand(k.shape[0], *q.shape[1:])
    return F.scaled_dot_product_attention(q, k, v, scale=1.0), None


def _attend_recompute(attn: nn.Module, q: torch.Tensor, tokens: torch.Tensor,
                      need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    batch, length, _ = tokens.shape
    width = attn.attn_dim
    if _plain_qkv(attn):
        bias = attn.qkv.bias[width:] if attn.qkv.bias is not None else None
        kv = F.linear(tokens, attn.qkv.weight[width:], bias)
    else:
        kv = attn.qkv(tokens)[..., width:]
    k, v = kv.view(batch, length, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return _attention(q, attn.k_norm(k), v, need_weights)  # weights: (B, H, Q, N)


def _attend_absorbed(attn: nn.Module, q: torch.Tensor, tokens: torch.Tensor,
                     need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    batch, length, dim = tokens.shape
    b, _, num_queries, _ = q.shape
    w_k = attn.qkv.weight[width : 2 * width].view(heads, head_dim, dim)
    w_v = attn.qkv.weight[2 * width :].view(heads, head_dim, dim)
    q_in_token_space = torch.einsum("bhqe,hed->bhqd", q, w_k).reshape(b, heads * num_queries, dim)
    # One "head" of width D: the H*Q rows attend over the tokens themselves (keys = values = X_l). Explicit, not
    # SDPA: SDPA would save its D-wide output (and a batch-expanded q) where this saves the N-wide weights, and
    # N < D for ViTs (197 vs 384 for ViT-S/16): measured 47 vs 42 MiB saved, ViT-S/16, Q=10, batch 8.
    context, weights = _attention(q_in_token_space.unsqueeze(1), tokens.unsqueeze(1), tokens.unsqueeze(1), True)
    context = context.view(batch, heads, num_queries, dim)
    out = torch.einsum("bhqd,hed->bhqe", context, w_v)
    if attn.qkv.bias is not None:
        out = out + attn.qkv.bias[2 * width :].view(1, heads, 1, head_dim)
    return out, weights.view(batch, heads, num_queries, length) if need_weights else None


def query_block_output(
    block: nn.Module,
    queries: torch.Tensor,
    tokens: torch.Tensor,
    *,
    form: Form = "auto",
    return_attention: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Output of `block` at the query rows.

    Args:
        block: a timm `Block` (checked by `vqt.backbone.tap.check_supported`), in eval mode.
        queries: P_l, shape (B, Q, D) or (1, Q, D) when all images share the queries.
        tokens: X_l = norm1_l(Z_{l-1}), shape (B, N, D); any float dtype.
        form: "absorbed", "recompute", or "auto" (see `choose_form`).
        return_attention: also return the queries' attention weights, (B, H, Q, N).

    Returns:
        O_l of shape (B, Q, D) (and the attention weights if asked), in the block's dtype.

    The path computes in the dtype of the block's weights: queries and tokens are cast to it (fp32 queries of a
    bf16 backbone keep their fp32 master copy; the gradient flows back through the cast), a store's fp16/bf16
    tokens are upcast for an fp32 backbone. Under `torch.autocast` (`--precision bf16`) a frozen block computes
    from its copy in the autocast dtype (`compute_block`, made once), and the tokens are cast once to that dtype:
    both attention matmuls read that one copy, so autograd saves X_l at half the bytes and no weight cast.
    """
    low = autocast_dtype(tokens.device)
    if low is not None:
        block = compute_block(block, low)
    attn = block.attn
    dtype = block.norm1.weight.dtype if getattr(block.norm1, "weight", None) is not None else queries.dtype
    queries, tokens = queries.to(dtype), tokens.to(low or dtype)
    if form == "auto":
        form = choose_form(block, queries.shape[1])
    if form == "absorbed" and not isinstance(attn.k_norm, nn.Identity):
        raise ValueError("the absorbed form is not exact with a key norm (qk-norm); use form='recompute'")

    normed = block.norm1(queries)
    q = _project_queries(block, normed)
    attend = _attend_absorbed if form == "absorbed" else _attend_recompute
    out, weights = attend(attn, q, tokens, return_attention)
    batch, num_queries = out.shape[0], out.shape[2]
    out = attn.norm(out.transpose(1, 2).reshape(batch, num_queries, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(normed).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    hidden = queries + block.drop_path1(block.ls1(out))
    hidden = hidden + block.drop_path2(block.ls2(block.mlp(block.norm2(hidden))))
    return (hidden, weights) if return_attention else hidden
