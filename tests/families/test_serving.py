"""Every family (core/synthetic_families.py) served as Chorus serves SmolLM2: loaded in NF4;
persona adapters on its own module names in slots, switched, evicted and refilled; the lean
LoRA forwards within bf16 rounding of peft's own (prompt and decode logits, the same tokens
fed to both); the decode attention, on every one of the family's own one-token calls, within
one bf16 rounding of the exact fp32 attention and never further from it than transformers'
sdpa plus a step (or declined, and the status saying so); a group of three personas giving
each persona's greedy reply alone; adapters of another family or another base refused with
the reason. (Whole-model logits with both fast paths against both stock paths are not
compared: on random-weight models a one-step rounding difference in an attention output is
amplified past any fixed logit tolerance, while each part is within its own.)"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from core.engine import attention
from core.engine import AdapterRef, GenerationSettings
from core.errors import AdapterIncompatible
from core.synthetic_families import FAMILIES, linear_names
from tests.families.conftest import family_dir_for
from tests.rounding import ULPS, bf16_step

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2, 28, 634]  # 11 tokens: past the 8-token windows
# Families whose decode steps keep transformers' attention, and why (status()["fast_paths"]).
DECLINES_ATTENTION = {"gemma2": "soft-caps attention scores"}


def greedy(n=8):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=3)


def leaf_names(paths) -> set[str]:
    return {p.rsplit(".", 1)[-1] for p in paths}


def test_loads_in_nf4_with_the_familys_layers(family, family_engine):
    import bitsandbytes as bnb
    import transformers

    from core.training.qlora import linear_names as model_linear_names

    eng = family_engine
    config_cls = getattr(transformers, FAMILIES[family][0])
    assert eng.info.quantization.startswith("NF4") and eng.info.model_type == config_cls.model_type
    quantized = [n for n, m in eng.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert leaf_names(n.replace(".base_layer", "") for n in quantized) == set(linear_names(family))
    assert len(quantized) == 2 * len(linear_names(family))  # 2 layers, every linear layer in 4 bits
    assert model_linear_names(eng.model) == sorted(linear_names(family))  # what training targets
    head, embed = eng.model.get_output_embeddings(), eng.model.get_input_embeddings()
    assert (head.weight.data_ptr() == embed.weight.data_ptr()) == bool(eng.model.config.tie_word_embeddings)


def test_adapters_switch_evict_and_refill_their_slots(family, family_engine, family_adapters):
    eng, ads = family_engine, family_adapters
    base = eng.generate(PROMPT, None, greedy())
    alone = {n: eng.generate(PROMPT, AdapterRef(n, ads[n]), greedy()) for n in "abc"}
    assert any(reply != base for reply in alone.values())  # the adapters change the voice
    assert eng.resident() == ["a", "b", "c"] and eng.pool.slot_count() == 3
    for slot in eng.pool._slots.values():  # every linear layer of both decoder layers, the family's names
        assert leaf_names(slot.signature[-1]) == set(linear_names(family)) and len(slot.signature[-1]) == 2 * len(linear_names(family))
    eng.generate(PROMPT, AdapterRef("d", ads["d"]), greedy())  # evicts a (least recent)
    assert eng.resident() == ["b", "c", "d"] and eng.pool.slot_count() == 3
    assert eng.generate(PROMPT, AdapterRef("a", ads["a"]), greedy()) == alone["a"]  # refilled in place
    assert eng.resident() == ["c", "d", "a"] and eng.pool.slot_count() == 3
    assert eng.generate(PROMPT, AdapterRef("c", ads["c"]), greedy()) == alone["c"]  # a switch back
    assert eng.status()["last_switch"]["ms"] >= 0


def forced_steps(model, ids, follow) -> torch.Tensor:
    """Logits of the prompt's last position and of one-token steps through the KV cache
    feeding the tokens `follow` (the same tokens to both sides: a near-tie that rounds the
    other way must not send the two down different continuations)."""
    out = []
    with torch.inference_mode():
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        out.append(o.logits[0, -1])
        mask = torch.ones_like(ids)
        for token in follow:
            nxt = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            o = model(input_ids=nxt, attention_mask=mask, past_key_values=o.past_key_values, use_cache=True)
            out.append(o.logits[0, -1])
    return torch.stack(out)


def assert_same_up_to_rounding(ours, theirs) -> None:
    """tests/rounding.py's bound at every position; the same greedy token wherever the
    reference's two best logits are further apart than that bound allows on both sides
    (random tiny models have near-ties a bf16 step can legitimately flip)."""
    for i, (x, y) in enumerate(zip(ours.float(), theirs.float())):
        allowed = ULPS * bf16_step(y.abs().max())
        assert float((x - y).abs().max()) <= allowed, f"position {i}: logits differ by more than {ULPS} bf16 steps"
        best, second = y.topk(2).values.tolist()
        if best - second > 2 * allowed:
            assert int(x.argmax()) == int(y.argmax()), f"position {i}: another greedy token"


@contextmanager
def recording_decode_attention(calls: list):
    """While inside, every decode-attention call also runs transformers' own sdpa function
    and an fp32 reference on the same inputs; `calls` gets, per one-token call: how far our
    error exceeds one bf16 rounding of the exact result (<= 0: it does not), our largest
    error, sdpa's largest error plus one bf16 step, the keys attended, the keys cached."""
    import torch.nn.functional as F
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def recorder(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        ours = attention.decode_attention(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
        if query.shape[2] == 1:
            theirs, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, is_causal=is_causal, **kwargs)
            exact = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=attention_mask,
                                                   scale=scaling, enable_gqa=True).transpose(1, 2)
            # One rounding of an fp32 result to bf16 (2**-8 of the value), plus fp32 sums in
            # another order over the keys (tests/test_attention.py, attention.self_check).
            bound = 2.0**-8 * exact.abs() + 4 * (key.shape[2] + key.shape[3]) * 2.0**-24 * value.float().abs().max()
            kept = int(attention_mask[0, 0, -1].sum()) if attention_mask is not None else key.shape[2]
            ours_err, theirs_err = (ours[0].float() - exact).abs(), (theirs.float() - exact).abs()
            calls.append((float((ours_err - bound).max()), float(ours_err.max()),
                          float(theirs_err.max() + 2.0**-8 * exact.abs().max()), kept, key.shape[2]))
        return ours

    AttentionInterface.register(attention.NAME, recorder)
    try:
        yield calls
    finally:
        AttentionInterface.register(attention.NAME, attention.decode_attention)


def test_lean_forward_and_decode_attention_match_stock_peft_and_transformers(family, family_engine, family_adapters):
    eng = family_engine
    ids, follow = torch.tensor([PROMPT]), PROMPT[1:9]  # 19 keys at the end: past the 8-token windows
    impl = eng.model.config._attn_implementation
    calls: list = []
    with eng._lock:
        for slot in (eng.ensure_adapter(AdapterRef("a", family_adapters["a"])), None):
            eng.pool.activate(slot)
            try:
                with recording_decode_attention(calls):  # the decode attention on this family's own calls
                    forced_steps(eng.model, ids, follow)
                # The lean LoRA forwards against peft's own, both over transformers' attention.
                if impl == attention.NAME:
                    eng.model.set_attn_implementation("sdpa")
                ours = forced_steps(eng.model, ids, follow)
                eng.pool.fast.stock_only = True
                theirs = forced_steps(eng.model, ids, follow)
            finally:
                eng.pool.fast.stock_only = False
                eng.model.set_attn_implementation(impl)
                eng.pool.activate(None)
            assert_same_up_to_rounding(ours, theirs)
    lora_layers = [m for m in eng.model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all("_chorus" in m.__dict__ for m in lora_layers)  # the lean forward is installed
    fast = eng.status()["fast_paths"]
    assert fast["ok"], fast
    if family in DECLINES_ATTENTION:
        assert DECLINES_ATTENTION[family] in fast["declined"]["decode_attention"]
        assert "declined" in fast["summary"] and impl != attention.NAME and not calls
        from types import SimpleNamespace

        from ui.status import status_html

        runtime = SimpleNamespace(error=None, ready=True, switching=None, switch_error=None, chat=SimpleNamespace(engine=eng),
                                  store=SimpleNamespace(training=SimpleNamespace(active=lambda: [])))
        assert "declined: decode attention" in status_html(runtime)  # the page's status line says so
        return
    assert fast["declined"] == {} and impl == attention.NAME
    layers = eng.model.config.num_hidden_layers
    assert len(calls) == 2 * len(follow) * layers  # every decode step of every layer took the decode attention
    for over, ours_err, theirs_err, _, _ in calls:
        assert over <= 0  # one bf16 rounding of the exact (fp32) attention of this family's call...
        assert ours_err <= theirs_err  # ...so never worse than transformers' sdpa by more than a bf16 step
    if getattr(eng.model.config, "sliding_window", None) and getattr(eng.model.config, "use_sliding_window", True):
        # The windows bit: calls of the last steps (up to 19 tokens) that attend to at most
        # a window's keys (the cache keeps the window, or the mask cuts to it).
        window = eng.model.config.sliding_window
        assert any(kept <= window for *_, kept, _ in calls[-layers:])


def test_a_group_of_three_personas_gives_each_its_reply_alone(family_engine, family_adapters):
    eng, ads = family_engine, family_adapters
    requests = [(PROMPT, AdapterRef("a", ads["a"])), (PROMPT[:6], AdapterRef("b", ads["b"])), (PROMPT[3:] + [504, 28], AdapterRef("c", ads["c"]))]
    together = eng.generate_group(requests, greedy())
    assert eng.status()["last_generation"]["lean_rows"] is True  # per-row lean forwards, not peft's batches
    assert together == [eng.generate(ids, ref, greedy()) for ids, ref in requests]


def _partner(family: str) -> str:
    """The next family whose adapters differ from ours in shape or in module names."""
    order = list(FAMILIES)
    i = order.index(family)
    mine = (FAMILIES[family][1].get("intermediate_size"), FAMILIES[family][2])
    return next(o for o in order[i + 1 :] + order[:i] if (FAMILIES[o][1].get("intermediate_size"), FAMILIES[o][2]) != mine)


def test_adapters_of_another_family_or_base_are_refused_with_the_reason(family, family_engine, tokenizer_dir, tmp_path):
    from core.synthetic import make_random_adapter

    order = list(FAMILIES)
    other = order[(order.index(family) + 1) % len(order)]  # llama3 -> llama3-untied: same family, another base
    other_dir = family_dir_for(other, tokenizer_dir)
    foreign = make_random_adapter(other_dir, tmp_path / "foreign", seed=9, rank=2, targets=list(linear_names(other)))
    with pytest.raises(AdapterIncompatible, match="different base model"):
        family_engine.check_adapter(foreign)

    # Without any record of its base, the module names or shapes still give it away.
    partner = _partner(family)
    bare = make_random_adapter(family_dir_for(partner, tokenizer_dir), tmp_path / "bare", seed=9, rank=2, targets=list(linear_names(partner)))
    (bare / "chorus_adapter.json").unlink()
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    same_names = FAMILIES[partner][2] == FAMILIES[family][2]
    with pytest.raises(AdapterIncompatible, match="needs .* mismatch" if same_names else "does not have"):
        family_engine.check_adapter(bare)


def test_family_fields_count_in_the_fingerprint_and_a_llamas_is_unchanged():
    import hashlib

    from transformers import Gemma2Config, LlamaConfig, MistralConfig

    from core.loader import _FINGERPRINT_KEYS, config_fingerprint

    llama = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                        intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    d = llama.to_dict()
    old = {k: d.get(k) for k in _FINGERPRINT_KEYS} | {"rope_theta": 100000.0}  # the formula adapters were recorded with
    assert config_fingerprint(llama) == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    scaled = LlamaConfig(**{**d, "rope_parameters": {"rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8192}})
    assert config_fingerprint(scaled) != config_fingerprint(llama)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128)
    assert config_fingerprint(Gemma2Config(**small, attn_logit_softcapping=50.0)) != config_fingerprint(Gemma2Config(**small, attn_logit_softcapping=None))
    assert config_fingerprint(MistralConfig(**small, sliding_window=8)) != config_fingerprint(MistralConfig(**small, sliding_window=None))
