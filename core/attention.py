"""Attention for one-token decode steps on the CPU, registered with transformers.

torch's CPU flash kernel, which transformers' "sdpa" picks, costs about 0.9 us per row
and key for a single query token (SmolLM2: 95 us per layer at 100 keys, 474 at 500; 364
for a batch of four at 100), because it is built for blocks of queries. Plain matmuls in
fp32 do the same step in 39, 96 and 83 us (bench in docs/performance.md). fp32 keeps the
accuracy of the flash kernel, which also accumulates in fp32: against an fp32 reference
both differ only by the final bf16 rounding.

So the model's attention implementation becomes "chorus_sdpa": one query token on the
CPU -> `decode_attention`; everything else (prompts, training, CUDA) -> transformers'
own sdpa function, unchanged. Masks are sdpa's (`sdpa_mask`), None when nothing is
padded.

A row's result never depends on the rest of the batch: the matmuls treat each row alone
(checked by the tests), and a padded row (a group of prompts of different lengths)
attends over its own keys only, exactly as when it runs alone, instead of over masked
padding.
"""

from __future__ import annotations

import torch

NAME = "chorus_sdpa"
# Arguments some models pass that change the arithmetic (T5 biases, paged caches, Gemma 2
# soft-capping, gpt-oss sinks): such calls keep transformers' function.
_OTHER_ARITHMETIC = ("position_bias", "cache", "softcap", "s_aux", "sinks")


def decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        query.shape[2] != 1
        or query.device.type != "cpu"
        or dropout
        or module.training
        or any(kwargs.get(k) is not None for k in _OTHER_ARITHMETIC)
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if attention_mask is None:
        return _rows(query, key, value, scaling), None
    out = []
    for i, at in enumerate(_row_keys(attention_mask)):
        if isinstance(at, slice):
            k, v = key[i : i + 1, :, at], value[i : i + 1, :, at]
        else:
            k, v = key[i : i + 1].index_select(2, at), value[i : i + 1].index_select(2, at)
        out.append(_rows(query[i : i + 1], k, v, scaling))
    return torch.cat(out), None


_last_plan = (None, None)  # (mask, its rows' keys): every layer of a step passes the same mask


def _row_keys(mask):
    """Per row, the keys it attends to: a slice for a left-padded row (its keys are a
    suffix), else their indices."""
    global _last_plan
    seen, keys = _last_plan
    if seen is mask:
        return keys
    keys = []
    for keep in mask.reshape(mask.shape[0], -1, mask.shape[-1])[:, -1]:  # the query's row of the mask
        first = int(keep.to(torch.int8).argmax()) if keep.any() else keep.numel()
        keys.append(slice(first, None) if bool(keep[first:].all()) else keep.nonzero().view(-1))
    _last_plan = (mask, keys)
    return keys


def _rows(query, key, value, scaling):
    """softmax(q k^T * scaling) v in fp32 for one query token per row; grouped-query heads
    by reshaping the query, so the key/value cache is not repeated. Returns (b, 1, heads, d)
    in the query's dtype, the layout transformers' attention functions return."""
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, d).float()
    w = torch.matmul(q, key.float().transpose(2, 3))
    w.mul_(scaling)
    w = torch.softmax(w, dim=-1)
    out = torch.matmul(w, value.float()).to(query.dtype)
    return out.reshape(b, 1, heads, value.shape[-1])


def use(model) -> bool:
    """Give `model` the decode attention if it runs transformers' sdpa on the CPU. Returns
    whether it did (models that cannot switch, or are on CUDA, keep their own)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if getattr(config, "_attn_implementation", None) != "sdpa" or not on_cpu or not model._can_set_attn_implementation():
        return False
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME
