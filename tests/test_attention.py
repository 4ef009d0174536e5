"""The decode attention (core/engine/attention.py): as accurate as torch's flash kernel; a row
in a batch, padded or not, within bf16 rounding of the row alone (a batched matmul is another
kernel shape) and blind to the keys its mask hides; its self-check; and prompts left to
transformers' sdpa."""

import pytest
import torch
import torch.nn.functional as F

from core.engine import attention
from core.model_source import ModelSource

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


class _Layer(torch.nn.Module):
    """What transformers passes as `module`: an eval-mode layer with its GQA groups."""

    num_key_value_groups = 3
    is_causal = True


def _qkv(rows, keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, 9, 1, 64, generator=g).bfloat16()
    k = torch.randn(rows, 3, keys, 64, generator=g).bfloat16()
    v = torch.randn(rows, 3, keys, 64, generator=g).bfloat16()
    return q, k, v


@pytest.mark.parametrize("keys", [1, 40, 300])
def test_one_token_steps_are_as_accurate_as_the_flash_kernel(keys):
    q, k, v = _qkv(4, keys)
    ours, _ = attention.decode_attention(_Layer().eval(), q, k, v, None, scaling=0.125)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.125, enable_gqa=True)
    flash = F.scaled_dot_product_attention(q, k, v, scale=0.125, enable_gqa=True)
    assert ours.shape == (4, 1, 9, 64) and ours.dtype == torch.bfloat16
    ours = ours.transpose(1, 2).float()  # transformers' layout back to sdpa's
    # Both round an fp32 result to bf16 once: at most one bf16 step apart, never worse.
    assert (ours - exact).abs().max() <= (flash.float() - exact).abs().max() + 2**-8


def test_a_row_in_a_batch_is_within_bf16_rounding_of_the_row_alone():
    q, k, v = _qkv(4, 50, seed=1)
    together, _ = attention.decode_attention(_Layer().eval(), q, k, v, None, scaling=0.125)
    for i in range(4):
        alone, _ = attention.decode_attention(_Layer().eval(), q[i : i + 1], k[i : i + 1].clone(), v[i : i + 1].clone(), None, scaling=0.125)
        # Both round an fp32 result to bf16 once; fp32 sums in another order can round to
        # the neighbouring bf16 value: one step (2**-7 of the value) apart at most.
        a, b = together[i : i + 1].float(), alone.float()
        assert ((a - b).abs() <= 2**-7 * b.abs() + 2**-20).all()


def test_the_self_check_passes_here_and_catches_a_wrong_result(monkeypatch):
    from types import SimpleNamespace

    config = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_size=576)  # SmolLM2
    assert attention.self_check(config) is None
    real = attention._rows
    monkeypatch.setattr(attention, "_rows", lambda q, k, v, s, keep=None: real(q, k, v, s * 1.05, keep))  # a 5% wrong scale
    assert "off by" in attention.self_check(config)


def test_a_padded_row_attends_over_its_own_keys_only():
    q, k, v = _qkv(3, 30, seed=2)
    mask = torch.ones(3, 1, 1, 30, dtype=torch.bool)
    mask[1, ..., :12] = False  # left padding
    mask[2, ..., 5:9] = False  # holes (any mask)
    together, _ = attention.decode_attention(_Layer().eval(), q, k, v, mask, scaling=0.125)
    junk = k.clone(), v.clone()
    hidden = ~mask[:, 0, 0][:, None, :, None]  # (rows, heads, keys, dim) of the keys and values
    junk[0].masked_fill_(hidden, 1e4)  # what the mask hides cannot matter, however large
    junk[1].masked_fill_(hidden, -1e4)
    again, _ = attention.decode_attention(_Layer().eval(), q, *junk, mask, scaling=0.125)
    assert torch.equal(together, again)
    for i, keep in enumerate(mask[:, 0, 0]):
        alone, _ = attention.decode_attention(_Layer().eval(), q[i : i + 1], k[i : i + 1, :, keep].contiguous(),
                                              v[i : i + 1, :, keep].contiguous(), None, scaling=0.125)
        a, b = together[i : i + 1].float(), alone.float()
        assert ((a - b).abs() <= 2**-7 * b.abs() + 2**-20).all()  # one bf16 step, as above


def test_prompts_and_training_keep_transformers_sdpa(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: calls.append(a[1].shape) or real(*a, **kw))
    q, k, v = _qkv(2, 6)
    attention.decode_attention(_Layer().eval(), q.expand(2, 9, 6, 64).contiguous(), k, v, None, scaling=0.125)  # a prompt
    attention.decode_attention(_Layer().train(), q, k, v, None, scaling=0.125)  # training
    attention.decode_attention(_Layer().eval(), q, k, v, None, dropout=0.1, scaling=0.125)
    assert len(calls) == 3
    attention.decode_attention(_Layer().eval(), q, k, v, None, scaling=0.125)  # a decode step
    assert len(calls) == 3
    with pytest.raises(ValueError, match="softcap"):  # arithmetic it does not do: transformers' own answer
        attention.decode_attention(_Layer().eval(), q, k, v, None, scaling=0.125, softcap=30.0)
    assert len(calls) == 4


def test_the_loaded_model_decodes_with_it_and_stays_close_to_sdpa(tiny_model_dir, monkeypatch):
    from core.loader import load_base

    used = []
    real = attention._rows
    monkeypatch.setattr(attention, "_rows", lambda *a: used.append(a[0].shape) or real(*a))

    model, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    assert model.config._attn_implementation == attention.NAME
    ids = torch.tensor([PROMPT])

    def run():
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            prompt = out.logits[:, -1].float()
            step = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        return prompt, step.logits[:, -1].float()

    ours = run()
    assert len(used) == model.config.num_hidden_layers  # the decode step, every layer; not the prompt
    model.set_attn_implementation("sdpa")
    theirs = run()
    assert len(used) == model.config.num_hidden_layers
    assert torch.equal(ours[0], theirs[0])  # the prompt ran transformers' sdpa both times
    assert torch.allclose(ours[1], theirs[1], atol=0.05, rtol=0)  # a decode step: bits may differ, values not


def test_the_engine_keeps_the_decode_attention_only_where_it_timed_faster(tiny_model_dir, monkeypatch):
    from core.errors import ChorusError
    from core.loader import load_base

    monkeypatch.delenv("CHORUS_DECODE_ATTENTION")
    timed = {"ours_ms": 0.7, "sdpa_ms": 0.5}
    monkeypatch.setattr(attention, "time_against_sdpa", lambda config, dtype, threads: timed)
    model, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    choice = attention.keep_if_faster(model)
    assert choice["used"] == "sdpa" and "sdpa timed faster here (0.50 vs 0.70 ms a layer)" in choice["why"]
    assert model.config._attn_implementation == "sdpa"

    timed.update(ours_ms=0.4)
    model, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    assert attention.keep_if_faster(model)["used"] == "chorus" and model.config._attn_implementation == attention.NAME

    monkeypatch.setattr(attention, "time_against_sdpa", lambda *a: pytest.fail("a forced choice is not timed"))
    monkeypatch.setenv("CHORUS_DECODE_ATTENTION", "off")
    assert attention.keep_if_faster(model)["used"] == "sdpa" and model.config._attn_implementation == "sdpa"
    monkeypatch.setenv("CHORUS_DECODE_ATTENTION", "maybe")
    with pytest.raises(ChorusError, match="not one of on, off"):
        attention.keep_if_faster(model)


def test_the_timing_runs_both_attentions_on_the_model_s_layout():
    from types import SimpleNamespace

    config = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_size=576)
    for dtype in (torch.bfloat16, torch.float32):
        timed = attention.time_against_sdpa(config, dtype)
        assert set(timed) == {"ours_ms", "sdpa_ms"} and timed["ours_ms"] > 0 and timed["sdpa_ms"] > 0
