"""The served model's compute dtype (core/engine/compute_dtype.py): bf16 or fp32 as timed on
the machine, forced by CHORUS_SERVE_DTYPE, bf16 where fp32 would not fit; an engine in fp32
keeps its fast paths, its adapters and its batches, and sizes its cache at 4 bytes a value."""

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from core.engine import AdapterRef, Engine, compute_dtype, cpu_4bit
from core.errors import ChorusError
from core.memory_fit import estimate
from core.model_source import ModelSource
from tests.rounding import assert_within_bf16_rounding, near_tie
from tests.test_batching import PROMPT, PROMPTS, assert_same_row, greedy, run_request, same_reply, submit_together

CONFIG = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=1000)


def _timed(monkeypatch, decode, prompt):
    """Pretend the projection took (bf16_ms, fp32_ms) per regime."""
    timed = {"decode": {"bf16_ms": decode[0], "fp32_ms": decode[1]}, "prompt": {"bf16_ms": prompt[0], "fp32_ms": prompt[1]}}
    monkeypatch.setattr(compute_dtype, "time_projection", lambda n_in, n_out, threads: timed)


@pytest.fixture
def unforced(monkeypatch):
    monkeypatch.delenv("CHORUS_SERVE_DTYPE", raising=False)


def test_fp32_only_where_it_was_timed_faster_and_fits(monkeypatch, unforced):
    _timed(monkeypatch, decode=(0.19, 0.09), prompt=(6.5, 0.8))  # an AVX2-only CPU, measured
    choice = compute_dtype.choose(CONFIG, "cpu", (1, 2))
    assert choice.dtype == torch.float32 and choice.name == "fp32"
    assert "fp32 (bf16 matmuls 7.5x slower" in choice.why and "decode 0.09 vs 0.19 ms" in choice.why
    assert compute_dtype.choose(CONFIG, "cpu", (1, 2), fits_in_fp32=lambda: True).dtype == torch.float32
    small = compute_dtype.choose(CONFIG, "cpu", (1, 2), fits_in_fp32=lambda: False)
    assert small.dtype == torch.bfloat16 and "would not fit in memory" in small.why

    _timed(monkeypatch, decode=(0.10, 0.12), prompt=(6.5, 0.8))  # a decode step slower in fp32: no
    assert compute_dtype.choose(CONFIG, "cpu", (1, 2)).dtype == torch.bfloat16
    _timed(monkeypatch, decode=(0.10, 0.10), prompt=(1.0, 0.95))  # inside the margin: a coin toss, bf16
    choice = compute_dtype.choose(CONFIG, "cpu", (1, 2))
    assert choice.dtype == torch.bfloat16 and choice.why.startswith("bf16 (fp32 not faster on this CPU")
    assert compute_dtype.choose(CONFIG, "cuda", (1, 2)).dtype == torch.bfloat16


def test_the_setting_forces_a_dtype_and_a_bad_one_says_the_choices(monkeypatch):
    monkeypatch.setattr(compute_dtype, "time_projection", lambda *a: pytest.fail("a forced dtype is not timed"))
    for name, dtype in (("fp32", torch.float32), ("BF16", torch.bfloat16)):
        monkeypatch.setenv("CHORUS_SERVE_DTYPE", name)
        assert compute_dtype.choose(CONFIG, "cpu", (1, 1)).dtype == dtype
    monkeypatch.setenv("CHORUS_SERVE_DTYPE", "fp16")
    with pytest.raises(ChorusError, match="CHORUS_SERVE_DTYPE='fp16' is not one of bf16, fp32"):
        compute_dtype.choose(CONFIG, "cpu", (1, 1))


def test_the_probe_times_both_dtypes_in_both_regimes(unforced):
    timed = compute_dtype.time_projection(64, 128, (1, 1))
    assert set(timed) == {"decode", "prompt"}
    assert all(t["bf16_ms"] > 0 and t["fp32_ms"] > 0 for t in timed.values())


def test_the_memory_estimate_counts_fp32_values_at_four_bytes():
    bf16, fp32 = estimate(CONFIG, context=512), estimate(CONFIG, context=512, width=4)
    assert fp32.kv_bytes_per_token == 2 * bf16.kv_bytes_per_token
    assert fp32.weights_bytes > bf16.weights_bytes  # the embeddings and norms; the NF4 weights stay 4-bit
    assert fp32.quantized_params == bf16.quantized_params > 0


@pytest.fixture(scope="module")
def fp32_engine(tiny_model_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("CHORUS_SERVE_DTYPE", "fp32")
    try:
        yield Engine.load(ModelSource("tiny-llama", tiny_model_dir))
    finally:
        mp.undo()


def test_an_engine_in_fp32_reports_it_and_sizes_its_cache_for_it(fp32_engine, tiny_model_dir):
    engine = fp32_engine
    assert engine.model.get_input_embeddings().weight.dtype == torch.float32
    layers = cpu_4bit._four_bit_layers(engine.model)
    assert layers and all(m.compute_dtype == torch.float32 for m in layers)
    status = engine.status()
    assert status["fast_paths"]["compute"]["dtype"] == "fp32"
    assert status["fast_paths"]["summary"].endswith("; computes in fp32 (set by CHORUS_SERVE_DTYPE)")
    assert "fp32 compute" in status["quantization"]
    assert status["fast_paths"]["ok"], status["fast_paths"]  # the self-checks pass in fp32 too
    from core.engine.scheduler import kv_bytes_per_token

    assert engine.scheduler.token_bytes == kv_bytes_per_token(engine.model.config, 4)


def test_fp32_lean_forwards_give_peft_s_greedy_tokens(fp32_engine, tiny_adapters):
    """The one-token LoRA path (torch.mv into fp32 buffers) against peft's own forward, on
    the same fp32 engine: other kernels, so within rounding and the same stable tokens."""
    engine = fp32_engine
    a = AdapterRef("a", tiny_adapters["a"])
    lean = run_request(engine, PROMPT, a, greedy(), trace=True)
    lean_layers = [m for m in engine.model.modules() if "_chorus" in m.__dict__]
    assert lean_layers and all(m._chorus.vec_ok and m._chorus.o16.dtype == torch.float32 for m in lean_layers)
    engine.pool.fast.stock_only = True
    try:
        stock = run_request(engine, PROMPT, a, greedy(), trace=True)
    finally:
        engine.pool.fast.stock_only = False
    assert_same_row(lean, stock)
    assert lean.tokens != run_request(engine, PROMPT, None, greedy()).tokens  # the adapter is applied


def test_fp32_batches_of_different_personas_match_each_row_alone(fp32_engine, tiny_adapters):
    engine = fp32_engine
    adapters = [AdapterRef(k, tiny_adapters[k]) for k in sorted(tiny_adapters)][:3] + [None]
    alone = [run_request(engine, p, a, greedy(), trace=True) for p, a in zip(PROMPTS, adapters)]
    together = submit_together(engine, zip(PROMPTS, adapters, [greedy()] * 4), trace=True)
    assert all(r.result["batch"] == 4 for r in together)
    for solo, row in zip(alone, together):
        assert_same_row(row, solo)
        assert same_reply(engine, row.text, solo)
    assert len({r.text for r in together}) == 4  # four voices, not one


def test_fp32_and_bf16_engines_agree_on_the_same_model(fp32_engine, tiny_model_dir, monkeypatch):
    """The same NF4 weights computed at two widths: bf16's rounding of the activations is the
    difference, so every position's logits agree within the suite's bf16 tolerance (1.2
    steps measured here on the tiny Llama), and the greedy token wherever bf16's logits are
    not a near-tie."""
    monkeypatch.setenv("CHORUS_SERVE_DTYPE", "bf16")
    bf16 = Engine.load(ModelSource("tiny-llama", tiny_model_dir))
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        ours = fp32_engine.model(input_ids=ids).logits[0]
        theirs = bf16.model(input_ids=ids).logits[0]
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16
    assert_within_bf16_rounding(ours, theirs, argmax=False)
    for i, (x, y) in enumerate(zip(ours, theirs)):
        assert int(x.argmax()) == int(y.argmax()) or near_tie(y, []), f"position {i}: another greedy token"


def test_a_model_that_fits_only_in_bf16_is_served_in_bf16(tiny_model_dir, monkeypatch, unforced):
    import core.memory_fit as memory_fit

    _timed(monkeypatch, decode=(0.19, 0.09), prompt=(6.5, 0.8))
    source = ModelSource("tiny-llama", tiny_model_dir)
    assert compute_dtype.for_source(source, 512, True, (1, 1)).dtype == torch.float32
    config = AutoConfig.from_pretrained(tiny_model_dir)
    need = {w: estimate(config, context=512, width=w).total_bytes for w in (2, 4)}
    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: ((need[2] + need[4]) // 2, "free"))
    choice = compute_dtype.for_source(source, 512, True, (1, 1))
    assert choice.dtype == torch.bfloat16 and "would not fit in memory" in choice.why
    assert compute_dtype.for_source(source, 512, False, (1, 1)).why.startswith("bf16 (the unquantized model")
