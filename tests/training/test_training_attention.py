"""Training's attention (core/training/attention.py): transformers' eager arithmetic under
activation checkpointing, so the backward pass is matmuls and only q, k and v are kept."""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.llama.modeling_llama import eager_attention_forward

from core.training.attention import training_attention

B, HEADS, KV_HEADS, T, D = 3, 4, 2, 24, 16


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, T, D, generator=g).to(torch.bfloat16).requires_grad_() for h in (HEADS, KV_HEADS, KV_HEADS))
    keep = torch.ones(T, T, dtype=torch.bool).tril()[None, None].repeat(B, 1, 1, 1)
    keep[1, :, :, :5] = False  # row 1 left-padded by 5: no query attends to those keys...
    keep[1, :, :5, 0] = True  # ...except the padding's own queries, to one key, as sdpa_mask leaves them
    keep[2, :, 3, :] = False  # a query that attends to nothing at all
    return q, k, v, keep


def _module():
    return SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, training=True, is_causal=True)


def _eager_reference(q, k, v, keep):
    additive = torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, torch.finfo(q.dtype).min)
    return eager_attention_forward(_module(), q, k, v, additive, scaling=D**-0.5)[0]


def test_output_and_gradients_are_transformers_eager_bitwise_where_anything_is_attended():
    q, k, v, keep = _inputs()
    out, _ = training_attention(_module(), q, k, v, keep, scaling=D**-0.5)
    assert torch.isfinite(out).all()  # the row that attends to nothing gives numbers, not NaN
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    grad[2, 3] = 0  # that row's output is meaningless; no loss is ever on it
    got = torch.autograd.grad(out, (q, k, v), grad)

    ref_out = _eager_reference(q, k, v, keep)
    ref = torch.autograd.grad(ref_out, (q, k, v), grad)
    attended = torch.ones(B, T, dtype=torch.bool)
    attended[2, 3] = False
    # Same ops on the same shapes as transformers' eager attention: equal bit for bit.
    assert torch.equal(out[attended], ref_out[attended])
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_attention_weights_are_recomputed_not_kept():
    q, k, v, keep = _inputs()
    kept = []

    def pack(t):
        kept.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        training_attention(_module(), q, k, v, keep, scaling=D**-0.5)
    assert not [s for s in kept if len(s) == 4 and s[-2:] == (T, T) and s != keep.shape]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _eager_reference(q, k, v, keep)
    assert [s for s in kept if s == (B, HEADS, T, T)]  # the control: eager keeps its weights


def test_no_mask_means_causal_and_other_calls_go_to_the_engines_attention():
    q, k, v, keep = _inputs()
    causal = keep.clone()
    causal[:] = torch.ones(T, T, dtype=torch.bool).tril()
    with torch.no_grad():
        assert torch.equal(training_attention(_module(), q, k, v, None)[0], training_attention(_module(), q, k, v, causal)[0])
        one = training_attention(_module(), q[:, :, -1:], k, v, None)[0]  # one decode step: the engine's path
    assert one.shape == (B, 1, HEADS, D)
    with pytest.raises(ValueError, match="softcap"):  # soft-capping is not this arithmetic: handed on (sdpa refuses it)
        training_attention(_module(), q, k, v, None, softcap=30.0)


def test_the_training_model_runs_it(tiny_model_dir):
    from core.model_source import ModelSource
    from core.training.attention import NAME
    from core.training.qlora import load_for_training

    model, _, _ = load_for_training(ModelSource("tiny", tiny_model_dir))
    assert model.config._attn_implementation == NAME
