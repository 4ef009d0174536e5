"""The CPU forwards of the base's 4-bit layers (core/engine/cpu_4bit.py): bitsandbytes' fused
kernel called directly is bitwise bitsandbytes' own forward; the bf16 copies are made before
anything is repacked, refused when they would not agree or not fit, used only in the regimes
they were timed faster in, and a model on them gives the same greedy tokens as without."""

import pytest
import torch

from core.engine import GenerationSettings, cpu_4bit
from core.engine.cpu_4bit import Cpu4bit, _Direct
from core.loader import load_base
from core.model_source import ModelSource
from tests.rounding import assert_within_bf16_rounding

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


def _model(tiny_model_dir):
    model, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    return model


def _layers(model):
    return cpu_4bit._four_bit_layers(model)


def _fast(monkeypatch, **regimes):
    """Pretend the copies timed faster in `regimes` (and slower in the others)."""
    timed = {r: {"bnb_ms": 1.0, "dense_ms": 0.5 if regimes.get(r) else 2.0} for r in cpu_4bit.SHAPES}
    monkeypatch.setattr(cpu_4bit, "_time_regimes", lambda layers, copies, threads: timed)


def test_one_row_and_a_batch_decide_decode_steps_together(tiny_model_dir, monkeypatch):
    timed = {"one": {"bnb_ms": 1.0, "dense_ms": 1.5}, "batch": {"bnb_ms": 3.0, "dense_ms": 2.0}, "prompt": {"bnb_ms": 9.0, "dense_ms": 2.0}}
    monkeypatch.setattr(cpu_4bit, "_time_regimes", lambda layers, copies, threads: timed)
    plan = Cpu4bit().install(_model(tiny_model_dir), budget=2**30)
    assert plan.regimes == {"decode": True, "prompt": True}  # 3.5 ms against 4.0 for the two decode calls
    timed["prompt"]["dense_ms"] = 8.5  # 94% of the kernel's time: inside the margin, not taken
    timed["one"]["dense_ms"] = 2.5
    cpu_4bit._cache_file().unlink()  # else the figures kept from the first start decide
    plan = Cpu4bit().install(_model(tiny_model_dir), budget=2**30)
    assert plan.regimes == {"decode": False, "prompt": False} and plan.bytes == 0


def test_the_timing_runs_once_per_machine_and_again_when_the_cache_is_gone(tiny_model_dir, monkeypatch):
    calls = []
    real = cpu_4bit._time_regimes
    monkeypatch.setattr(cpu_4bit, "_time_regimes", lambda *a: calls.append(1) or real(*a))
    first = Cpu4bit().install(_model(tiny_model_dir), budget=2**30)
    again = Cpu4bit().install(_model(tiny_model_dir), budget=2**30)
    assert len(calls) == 1 and again.timings == first.timings and again.regimes == first.regimes
    cpu_4bit._cache_file().write_text("{not json")  # a damaged file: timed again, and rewritten
    Cpu4bit().install(_model(tiny_model_dir), budget=2**30)
    assert len(calls) == 2 and len(cpu_4bit._load_cache()) == 1


def test_copies_follow_the_timing_and_keep_the_greedy_tokens(tiny_model_dir, monkeypatch):
    plain = _model(tiny_model_dir)
    Cpu4bit().install(plain, budget=0)  # no copies: bitsandbytes' kernels only
    model = _model(tiny_model_dir)
    _fast(monkeypatch, prompt=True)
    plan = Cpu4bit().install(model, budget=2**30)
    assert plan.regimes == {"decode": False, "prompt": True}
    assert plan.bytes == sum(m.out_features * m.in_features * 2 for m in _layers(model)) > 0
    assert "bf16 copies for prompt" in plan.summary
    # Decode steps (one token a row, alone or in a batch) one way, prompts the other.
    assert [plan.wants(torch.empty(shape)) for shape in ((1, 1, 8), (8, 1, 8), (1, 2, 8), (4, 30, 8))] == [
        False, False, True, True]

    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: calls.append(w) or real(x, w, b))
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        ours = model(input_ids=ids).logits
        monkeypatch.setattr(torch.nn.functional, "linear", real)
        theirs = plain(input_ids=ids).logits
    copies = {id(m._chorus_dense) for m in _layers(model)}
    assert copies <= {id(w) for w in calls}  # the prompt ran on the copies
    assert_within_bf16_rounding(ours, theirs)

    s = GenerationSettings(temperature=0, max_new_tokens=8, seed=0)
    with torch.inference_mode():
        a = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens, do_sample=False)
        b = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens, do_sample=False)
    assert torch.equal(a, b)


def test_no_copy_is_kept_where_the_4bit_kernel_is_faster_everywhere(tiny_model_dir, monkeypatch):
    model = _model(tiny_model_dir)
    _fast(monkeypatch)
    plan = Cpu4bit().install(model, budget=2**30)
    assert plan.bytes == 0 and not any(plan.wants(torch.empty(shape)) for shape in ((1, 1, 8), (4, 1, 8), (1, 100, 8)))
    assert all(m._chorus_dense is None for m in _layers(model))
    assert "faster than the 4-bit kernel" in plan.summary


def test_copies_over_the_budget_or_switched_off_are_not_made(tiny_model_dir, monkeypatch):
    model = _model(tiny_model_dir)
    plan = Cpu4bit().install(model, budget=1024)
    assert plan.bytes == 0 and "over the 0 MB budget" in plan.summary
    monkeypatch.setenv("CHORUS_DENSE_WEIGHTS", "off")
    assert cpu_4bit.budget_bytes() == 0
    monkeypatch.setenv("CHORUS_DENSE_WEIGHTS", "300")
    assert cpu_4bit.budget_bytes() == 300 * 2**20
    monkeypatch.setenv("CHORUS_DENSE_WEIGHTS", "lots")
    assert cpu_4bit.budget_bytes() is None
    monkeypatch.delenv("CHORUS_DENSE_WEIGHTS")
    assert 0 < cpu_4bit.budget_bytes() < 2**40  # a quarter of the memory available
    assert "must be 'off' or a number of MB" in Cpu4bit().install(_model(tiny_model_dir), None).summary


def test_a_copy_that_disagrees_with_bitsandbytes_is_refused(tiny_model_dir, monkeypatch):
    real = cpu_4bit._dequantized
    monkeypatch.setattr(cpu_4bit, "_dequantized", lambda layer: real(layer) * 1.05)  # 5% off
    _fast(monkeypatch, prompt=True)
    model = _model(tiny_model_dir)
    plan = Cpu4bit().install(model, budget=2**30)
    assert plan.bytes == 0 and "self-check" in plan.summary and "beyond bf16 rounding" in plan.summary
    assert all(m._chorus_dense is None for m in _layers(model))


def test_copies_are_made_before_bitsandbytes_repacks_the_weights(tiny_model_dir):
    model = _model(tiny_model_dir)
    with torch.inference_mode():
        model(input_ids=torch.tensor([PROMPT]))  # a forward first: bitsandbytes repacks where it does
    if not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in _layers(model)):
        pytest.skip("bitsandbytes does not repack its weights on this CPU (no AVX512-BF16)")
    plan = Cpu4bit().install(model, budget=2**30)
    assert plan.bytes == 0 and "already repacked" in plan.summary


@pytest.mark.skipif(not _Direct.available(), reason="this bitsandbytes has no fused CPU kernel")
def test_the_direct_call_is_bitwise_bitsandbytes_and_survives_unpacking(tiny_model_dir):
    model = _model(tiny_model_dir)
    plan = Cpu4bit().install(model, budget=0)
    layers = _layers(model)
    if not plan.direct:
        assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
        pytest.skip("bitsandbytes does not repack its weights on this CPU: nothing to call directly")
    assert plan.summary.startswith("fused kernel called directly")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for layer in layers:
            for rows in (1, 3, 40):
                x = torch.randn(2, rows, layer.in_features, generator=g).bfloat16()
                assert torch.equal(layer(x), type(layer).forward(layer, x))
        layer = layers[0]
        layer.state_dict()  # bitsandbytes unpacks the weights to save them, and repacks at the next forward
        x = torch.randn(1, 1, layer.in_features, generator=g).bfloat16()
        assert torch.equal(layer(x), type(layer).forward(layer, x))
        assert layer._chorus_direct.ptr == layer.weight.data.data_ptr()


def test_the_engine_reports_its_choice(tiny_engine_factory):
    engine = tiny_engine_factory()
    fast = engine.status()["fast_paths"]
    assert "4-bit layers:" in fast["summary"]
    assert fast["cpu_4bit"]["summary"] in fast["summary"]
    assert set(fast["cpu_4bit"]["timings"]) in (set(), set(cpu_4bit.SHAPES))
