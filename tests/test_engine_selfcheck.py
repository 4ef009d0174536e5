"""The engine-start self-check of the fast kernels: it passes here in a few ms, and where a
kernel disagrees with the reference beyond bf16 rounding, the engine runs the reference
instead and its status (and the status line) says so."""

from types import SimpleNamespace

import torch

from core.engine import AdapterRef, GenerationSettings

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


def greedy(n=12):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=3)


def test_the_fast_paths_pass_the_self_check_here_in_a_few_ms(tiny_engine):
    fast = tiny_engine.status()["fast_paths"]
    assert fast["ok"] and fast["summary"].startswith("on; 4-bit layers: ") and fast["off"] == {}
    assert fast["ms"] < 250  # a few ms on a quiet machine; generous for a busy one
    assert tiny_engine.pool.fast.vector is True


def test_a_one_token_kernel_that_disagrees_sends_decode_steps_through_f_linear(tiny_engine_factory, tiny_adapters, monkeypatch):
    import core.engine.lora_fast as lora_fast

    good = tiny_engine_factory()
    expected = {n: good.generate(PROMPT, AdapterRef(n, tiny_adapters[n]), greedy()) for n in ("a", "b")}
    requests = [(PROMPT, AdapterRef("a", tiny_adapters["a"])), (PROMPT[2:], AdapterRef("b", tiny_adapters["b"]))]
    group = [good.generate(p, r, greedy()) for p, r in requests]
    calls = []
    real = lora_fast._mv
    monkeypatch.setattr(lora_fast, "_mv", lambda w, x, out=None: calls.append(1) or real(w, x, out=out).mul_(1.5))
    engine = tiny_engine_factory()
    fast = engine.status()["fast_paths"]
    assert not fast["ok"] and "lora_mv" in fast["off"]
    assert fast["summary"].startswith("off (self-check: torch.mv and F.linear differ")
    assert engine.pool.fast.vector is False
    calls.clear()
    for n in ("a", "b"):
        assert engine.generate(PROMPT, AdapterRef(n, tiny_adapters[n]), greedy()) == expected[n]
    assert engine.generate_group(requests, greedy()) == group
    assert calls == []  # the kernel that failed the check never ran a step


def test_a_decode_attention_that_disagrees_gives_way_to_sdpa(tiny_engine_factory, monkeypatch):
    from core.engine import attention

    real = attention._rows
    monkeypatch.setattr(attention, "_rows", lambda q, k, v, s: real(q, k, v, s) * 1.1)
    engine = tiny_engine_factory()
    fast = engine.status()["fast_paths"]
    assert "decode_attention" in fast["off"] and "lora_mv" not in fast["off"]
    assert engine.model.config._attn_implementation == "sdpa"
    assert engine.generate(PROMPT, None, greedy(4))


def test_the_status_line_says_when_the_fast_paths_are_off(tiny_engine, monkeypatch):
    from ui.status import status_html

    runtime = SimpleNamespace(error=None, ready=True, switching=None, switch_error=None, chat=SimpleNamespace(engine=tiny_engine),
                              store=SimpleNamespace(training=SimpleNamespace(active=lambda: [])))
    assert "fast paths" not in status_html(runtime)
    tiny_engine.fast_paths = {"ok": False, "summary": "off (self-check: torch.mv and F.linear differ)", "off": {"lora_mv": "x"}, "ms": 1.0}
    tiny_engine._publish()
    assert "fast paths: off (self-check: torch.mv and F.linear differ)" in status_html(runtime)
    assert torch.get_num_threads() >= 1


def test_a_decode_attention_timed_slower_gives_way_to_sdpa_and_the_status_says_so(tiny_engine_factory, monkeypatch):
    from core.engine import attention

    monkeypatch.delenv("CHORUS_DECODE_ATTENTION")
    monkeypatch.setattr(attention, "time_against_sdpa", lambda config, dtype, threads: {"ours_ms": 0.9, "sdpa_ms": 0.6})
    engine = tiny_engine_factory()
    fast = engine.status()["fast_paths"]
    assert fast["ok"] and fast["attention"]["used"] == "sdpa"  # a timing, not a failed check
    assert "decode attention: sdpa, transformers' sdpa timed faster here (0.60 vs 0.90 ms a layer)" in fast["summary"]
    assert engine.model.config._attn_implementation == "sdpa"
    assert engine.generate(PROMPT, None, greedy(4))
