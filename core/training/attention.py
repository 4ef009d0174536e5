"""Attention for training on the CPU: transformers' eager arithmetic, recomputed in the
backward pass instead of kept.

torch's CPU flash kernel, which "sdpa" runs, keeps little for the backward pass but its
backward is slow on short sequences: on SmolLM2-135M at 4 x 180 tokens it took 12.6 ms a
layer against 3.6 ms for its forward, a fifth of a training step (torch.profiler). The
eager arithmetic (bf16 matmuls, softmax in fp32, as transformers' `eager_attention_forward`)
has a fast backward, matmuls again, but keeps every layer's attention weights in fp32 and
bf16 (242 MB more for that batch). Here it runs under non-reentrant activation
checkpointing: the backward pass recomputes the weights from q, k and v (which sdpa keeps
too) and runs the eager backward on them. A forward and backward of 4 x 180 tokens went
from 2.5 to 2.0 s, with what is kept the same as sdpa's (docs/training.md has the figures).

Every forward of the training process with more than one query token takes the same
arithmetic (training steps, held-out losses, prompts of sample replies), so the curve,
"before" and "after" are one measure. One-token decode steps, calls with arithmetic this
does not cover (dropout, soft-capping, sinks, biases, caches) and float masks go to the
engine's attention (core/engine/attention.py), as before.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

NAME = "chorus_train"
_OTHER_ARITHMETIC = ("position_bias", "cache", "softcap", "s_aux", "sinks")


def _eager(query, key, value, keep, scaling):
    """softmax(q k^T * scaling, masked) v as transformers' eager attention computes it
    (bf16 scores, fp32 softmax, weights back in bf16); `keep` (b or 1, 1, q, k) bool, True
    where a query attends to a key. Masked scores get the dtype's lowest value, as eager's
    additive mask gives them, so a row that attends to nothing is finite, not NaN."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query heads: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value)


_causal = {}  # (q, k, device) -> the bool causal mask, made once per shape


def _causal_keep(q_len: int, k_len: int, device) -> torch.Tensor:
    key = (q_len, k_len, str(device))
    if key not in _causal:
        _causal.clear()
        _causal[key] = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
    return _causal[key]


def training_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from core.engine.attention import decode_attention

    q_len, k_len = query.shape[2], key.shape[2]
    if (
        q_len == 1
        or query.device.type != "cpu"
        or dropout
        or kwargs.get("output_attentions")
        or any(kwargs.get(k) is not None for k in _OTHER_ARITHMETIC)
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
        or (attention_mask is None and (q_len != k_len or is_causal is False or not getattr(module, "is_causal", True)))
    ):
        return decode_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    keep = attention_mask[:, :, :, :k_len] if attention_mask is not None else _causal_keep(q_len, k_len, query.device)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        out = checkpoint(_eager, query, key, value, keep, scaling, use_reentrant=False)
    else:
        out = _eager(query, key, value, keep, scaling)
    return out.transpose(1, 2).contiguous(), None


def use(model) -> bool:
    """Give `model` (loaded for training, on the CPU with the engine's attention) this
    attention; returns whether it did. Models on other attention keep theirs."""
    from core.engine import attention as engine_attention
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != engine_attention.NAME:
        return getattr(model.config, "_attn_implementation", None) == NAME
    AttentionInterface.register(NAME, training_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
