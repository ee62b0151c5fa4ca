"""Attention for training on CPU: two matmuls for short sequences, SDPA's flash kernel for long ones.

PyTorch's CPU flash-attention backward (``_scaled_dot_product_flash_attention_for_cpu_backward``) was 22% of a LoRA
step on the demo set (batches of ~100 tokens; torch profiler, 2 cores): it works in blocks sized for long
sequences. Below ``EAGER_MAX_TOKENS`` queries, attention here is ``softmax(q kᵀ) v`` as two batched matmuls with
the query heads grouped by their key/value head (no copies of the key/value heads), so autograd's backward is four
more matmuls. The ``[batch, heads, q, k]`` probabilities it keeps for the backward grow with the square of the
length, which is why long batches stay on the flash kernel (its memory is linear).

Registered under its own name for transformers' attention and mask interfaces (the mask is SDPA's: boolean, or
None when causal alone will do).
"""

from __future__ import annotations

import torch

NAME = "slmtune_train"
EAGER_MAX_TOKENS = 256


def train_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if q > EAGER_MAX_TOKENS or dropout or kwargs.get("s_aux") is not None or kwargs.get("softcap") \
            or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    qg = query.reshape(batch, kv_heads, groups * q, dim)  # head h = kv head h // groups, as repeat_kv pairs them
    scores = torch.matmul(qg, key.transpose(-1, -2)).view(batch, kv_heads, groups, q, length) * scale
    if attention_mask is None:  # causal, no padding: the last q queries of length keys
        keep = torch.ones(q, length, dtype=torch.bool, device=query.device).tril(length - q)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[:, :, None, :, :length], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[:, :, None, :, :length]
    probs = torch.softmax(scores, dim=-1)  # bf16 in, fp32 inside, bf16 out: one saved copy, not two
    out = torch.matmul(probs.view(batch, kv_heads, groups * q, length), value)
    return out.view(batch, heads, q, dim).transpose(1, 2).contiguous(), None


def use_train_attention(model) -> None:
    """Switch a model that uses SDPA to :func:`train_attention` (other implementations are left alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(NAME, train_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
