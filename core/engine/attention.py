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

Rows share batched matmuls, padded or not (a group of prompts of different lengths): the
padding's scores are set to -inf, so its weights are exactly 0 and each row's output is
its own keys' (the softmax then sums over more terms, zeros among them). Other kernel
shapes than a row alone, so within bf16 rounding of it. (Looping over padded rows, each
over its own keys, gave bitwise the row alone but cost 6 of a 59 ms step at 4 rows.) `self_check` compares the decode step with
an fp32 reference on this machine at engine start; where it fails, the engine keeps sdpa.
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
    keep = _query_keys(attention_mask)
    if keep is None:
        return _rows(query, key, value, scaling), None
    return _rows(query, key, value, scaling, keep), None


_last_plan = (None, None)  # (mask, the keys its rows attend to): every layer of a step passes the same mask


def _query_keys(mask):
    """(rows, keys) bool: the keys each row's query attends to; None when every row attends to all."""
    global _last_plan
    seen, keep = _last_plan
    if seen is mask:
        return keep
    keep = mask.reshape(mask.shape[0], -1, mask.shape[-1])[:, -1]  # the query's row of the mask
    keep = None if bool(keep.all()) else keep
    _last_plan = (mask, keep)
    return keep


def _rows(query, key, value, scaling, keep=None):
    """softmax(q k^T * scaling) v in fp32 for one query token per row; grouped-query heads
    by reshaping the query, so the key/value cache is not repeated. `keep` (rows, keys):
    the keys each row attends to (the others get a score of -inf, so a weight of exactly 0).
    Returns (b, 1, heads, d) in the query's dtype, the layout transformers' attention
    functions return."""
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(b, kv_heads, heads // kv_heads, d).float()
    w = torch.matmul(q, key.float().transpose(2, 3))
    w.mul_(scaling)
    if keep is not None:
        w.masked_fill_(~keep.view(b, 1, 1, -1), float("-inf"))
    w = torch.softmax(w, dim=-1)
    out = torch.matmul(w, value.float()).to(query.dtype)
    return out.reshape(b, 1, heads, value.shape[-1])


def declined(model) -> str | None:
    """Why `model` does not (or would not) run the decode attention; None when it does or can.
    Shown in the engine's status (`fast_paths["declined"]`)."""
    config = model.config
    impl = getattr(config, "_attn_implementation", None)
    if impl == NAME:
        return None
    arch = type(model).__name__
    if any(p.device.type != "cpu" for p in model.parameters()):
        return "not used off the CPU"
    if getattr(config, "attn_logit_softcapping", None):
        # The soft cap is applied to the scores before the softmax: another arithmetic.
        return f"{arch} soft-caps attention scores; transformers' own '{impl}' attention runs"
    if impl != "sdpa":
        return f"{arch} runs transformers' '{impl}' attention, not sdpa; kept as it is"
    if not model._can_set_attn_implementation():
        return f"{arch} cannot switch its attention implementation"
    return None


def use(model) -> bool:
    """Give `model` the decode attention if it runs transformers' sdpa on the CPU. Returns
    whether it did (models that cannot switch, soft-cap their attention scores, or are on
    CUDA keep their own: `declined` says why)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    if getattr(config, "_attn_implementation", None) == NAME:
        return True
    if declined(model) is not None:
        return False
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME


def self_check(config, keys: int = 64, seed: int = 0) -> str | None:
    """Compare one decode step of `decode_attention`'s arithmetic with an fp32 reference
    (torch's math sdpa on fp32 copies) for the model's head layout. None when within bf16
    rounding; else what disagreed. Well under a millisecond on SmolLM2's shapes.

    The bound: both compute in fp32, ours rounds once to bf16 (off by at most 2**-8 of the
    value); fp32 softmax and weighted sums over `keys` keys of width d differ from another
    fp32 order by some (keys + d) * 2**-24 of max|v|, allowed 4 times over."""
    import torch.nn.functional as F

    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    d = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, 1, d, generator=g).bfloat16()
    k = torch.randn(1, kv_heads, keys, d, generator=g).bfloat16()
    v = torch.randn(1, kv_heads, keys, d, generator=g).bfloat16()
    scaling = d**-0.5
    with torch.no_grad():
        ours = _rows(q, k, v, scaling).transpose(1, 2).float()  # back to sdpa's layout
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scaling,
                                             enable_gqa=kv_heads != heads)
        bound = 2.0**-8 * ref.abs() + 4 * (keys + d) * 2.0**-24 * v.float().abs().max()
        off = (ours - ref).abs()
    if not bool((off <= bound).all()):
        return f"the decode attention is off by {float(off.max()):.3g} from an fp32 reference"
    return None


# The decode steps timed at engine start: (rows, keys, padded). One conversation deep in its
# context, and a batch whose rows are padded to different lengths (a bool mask).
TIMED = ((1, 512, False), (4, 256, True))
_TRIALS = 5


class _Probe(torch.nn.Module):
    """What transformers passes as `module` to an attention function: an eval-mode layer."""

    is_causal = True
    layer_idx = 0

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups


def time_against_sdpa(config, dtype, threads: int = 1, seed: int = 0) -> dict:
    """Median ms of one layer's attention for the decode steps in TIMED, `decode_attention`
    against transformers' sdpa function (what the model would run instead), on the model's
    head layout, its compute dtype and the decode threads. {"ours_ms", "sdpa_ms"} summed over
    TIMED. A few ms."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from core.engine.timing import interleaved_ms

    config = config.get_text_config() if hasattr(config, "get_text_config") else config  # multimodal: the decoder's
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    d = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    module = _Probe(heads // kv_heads).eval()
    g = torch.Generator().manual_seed(seed)
    before = torch.get_num_threads()
    totals = {"ours_ms": 0.0, "sdpa_ms": 0.0}
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for rows, keys, padded in TIMED:
                q = torch.randn(rows, heads, 1, d, generator=g).to(dtype)
                k = torch.randn(rows, kv_heads, keys, d, generator=g).to(dtype)
                v = torch.randn(rows, kv_heads, keys, d, generator=g).to(dtype)
                mask = None
                if padded:  # row i's first 16 * i keys are padding
                    mask = (torch.arange(keys)[None, :] >= 16 * torch.arange(rows)[:, None]).view(rows, 1, 1, keys)
                args = (module, q, k, v, mask)
                ways = {"ours_ms": lambda: decode_attention(*args, scaling=d**-0.5),
                        "sdpa_ms": lambda: sdpa_attention_forward(*args, scaling=d**-0.5)}
                for name, ms in interleaved_ms(ways, _TRIALS).items():
                    totals[name] += ms
    finally:
        torch.set_num_threads(before)
    return {name: round(ms, 4) for name, ms in totals.items()}


def keep_if_faster(model, threads: int = 1) -> dict:
    """Time the decode attention against sdpa on `model`'s layout and dtype (time_against_sdpa)
    and switch the model to transformers' sdpa where ours was slower: on one CPU ours won
    (bf16, SmolLM2: 36.7 against 49.0 ms a step at 512 keys), on another sdpa did (68.7
    against 42.7), and in fp32 torch's flash kernel needs no conversions.
    CHORUS_DECODE_ATTENTION=on|off skips the timing. Returns {"used": "chorus" | "sdpa",
    "why", "ours_ms", "sdpa_ms"} for the engine's status."""
    import os

    from core.errors import ChorusError

    forced = os.environ.get("CHORUS_DECODE_ATTENTION", "").strip().lower()
    if forced and forced not in ("on", "off"):
        raise ChorusError(f"CHORUS_DECODE_ATTENTION={forced!r} is not one of on, off; unset it to let the engine time it.")
    if forced:
        if forced == "off":
            model.set_attn_implementation("sdpa")
        return {"used": "chorus" if forced == "on" else "sdpa", "why": "set by CHORUS_DECODE_ATTENTION"}
    emb = model.get_input_embeddings()
    timed = time_against_sdpa(model.config, emb.weight.dtype, threads)
    ours, theirs = timed["ours_ms"], timed["sdpa_ms"]
    if ours > theirs:
        model.set_attn_implementation("sdpa")
        return {"used": "sdpa", "why": f"transformers' sdpa timed faster here ({theirs:.2f} vs {ours:.2f} ms a layer)", **timed}
    return {"used": "chorus", "why": f"timed faster than sdpa here ({ours:.2f} vs {theirs:.2f} ms a layer)", **timed}
