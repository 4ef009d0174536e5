"""The NF4 memory estimate (core/memory_fit.py): against the embedded model's measured
footprint and tiny models of each family loaded in NF4, and the refusal of a model that does
not fit, with its figures and a smaller suggestion, before anything is loaded."""

from __future__ import annotations

import pytest

import core.memory_fit as memory_fit
from core.errors import ModelTooLarge
from core.memory_fit import BITS_NF4, check_fits, estimate

# README/docs (bench/run.py on the embedded model): footprint_nf4_mb 109.8, which
# get_memory_footprint() counts at 4 bits a quantized weight.
EMBEDDED_FOOTPRINT_NF4_MB = 109.8


def _packed(est) -> float:
    """The estimate's weights as get_memory_footprint() counts them (4 bits, no quant state)."""
    return est.weights_bytes - est.quantized_params * (BITS_NF4 - 4) / 8


def test_the_embedded_model_matches_its_measured_footprint(embedded_model_dir):
    from transformers import AutoConfig

    est = estimate(AutoConfig.from_pretrained(str(embedded_model_dir)))
    # SmolLM2-135M: 30 layers of 3,538,944 linear weights are quantized; the tied head is the
    # embedding matrix, kept in bf16 and counted once.
    assert est.quantized_params == 30 * 3_538_944
    assert est.params == 134_515_008
    assert abs(_packed(est) / 1e6 - EMBEDDED_FOOTPRINT_NF4_MB) < 0.5  # the same count, to rounding
    # With the blockwise constants and margin, the weights estimate stays above the measure, by at most 10%.
    assert 1.0 < est.weights_bytes / 1e6 / EMBEDDED_FOOTPRINT_NF4_MB < 1.10


def _tiny(family: str):
    from transformers import Gemma2Config, LlamaConfig, Phi3Config, Qwen2Config, Qwen3Config

    common = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama-untied": lambda: LlamaConfig(**common, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=True),  # q/k/v biases
        "qwen3": lambda: Qwen3Config(**common, head_dim=16),  # q/k norms
        "gemma2": lambda: Gemma2Config(**common, head_dim=16, sliding_window=64),  # sliding layers
        "phi3": lambda: Phi3Config(**{**common, "num_key_value_heads": 4}),  # fused qkv_proj, gate_up_proj
    }[family]()


@pytest.mark.parametrize("family", ["llama-untied", "qwen2", "qwen3", "gemma2", "phi3"])
def test_tiny_models_of_each_family_match_their_nf4_load(family, tmp_path):
    """The estimate counts what bitsandbytes quantizes and what it keeps in bf16 (biases,
    norms, the head), for every family's own module layout."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.loader import nf4_config

    config = _tiny(family)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), quantization_config=nf4_config(), device_map="cpu",
                                                 dtype=torch.bfloat16)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary tables, counted by the footprint
    measured = model.get_memory_footprint() - buffers
    est = estimate(config)
    assert est.quantized_params > 0
    assert abs(_packed(est) - measured) / measured < 0.01, (family, _packed(est), measured)


def test_kv_cache_follows_the_config_and_sliding_layers_hold_their_window():
    llama = _tiny("llama-untied")
    est = estimate(llama, context=512, rows=3)
    assert est.kv_bytes == 2 * 2 * 16 * 2 * 512 * 3 * 2  # (k, v) x layers x kv heads x head_dim x tokens x rows x bf16
    gemma = _tiny("gemma2")  # layer_types alternate sliding / full: the sliding one holds 64 tokens
    assert estimate(gemma, context=512).kv_bytes == 2 * 2 * 16 * 2 * (512 + 64)


QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False)


def test_a_7b_model_is_estimated_without_memory():
    from transformers import Qwen2Config

    est = estimate(Qwen2Config(**QWEN25_7B), context=4096)
    assert 7.5e9 < est.params < 7.7e9  # Qwen2.5-7B: 7.62B
    assert 5.5e9 < est.weights_bytes < 6.2e9  # about 3.7 GB of NF4 layers + 2.2 GB of bf16 embeddings and head


def test_a_model_that_does_not_fit_is_refused_with_figures_and_a_smaller_one(monkeypatch):
    from transformers import Qwen2Config

    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: (4 * 10**9, "RAM available (of 8.0 GB)"))
    with pytest.raises(ModelTooLarge) as err:
        check_fits(Qwen2Config(**QWEN25_7B), "Qwen/Qwen2.5-7B-Instruct", device="cpu")
    text = str(err.value)
    assert "'Qwen/Qwen2.5-7B-Instruct' needs about" in text and "7.62B parameters" in text
    assert "there are 4.00 GB RAM available (of 8.0 GB)" in text
    assert "--model Qwen/Qwen2.5-1.5B-Instruct" in text and "CHORUS_MEMORY_CHECK=0" in text


def test_a_long_context_that_does_not_fit_suggests_a_shorter_one(monkeypatch):
    from transformers import Qwen2Config

    config = Qwen2Config(**QWEN25_7B)
    short = estimate(config, context=2048)
    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: (short.total_bytes + 10**9, "free"))
    check_fits(config, "q", device="cuda", context=2048)  # fits
    with pytest.raises(ModelTooLarge, match=r"Try --context-limit \d+ or less \(now 32768 tokens\)"):
        check_fits(config, "q", device="cuda", context=32768)


def test_the_loader_refuses_before_loading_and_the_check_can_be_turned_off(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from core.loader import load_base
    from core.model_source import ModelSource

    source = ModelSource("tiny-llama", tiny_model_dir)
    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: (10**6, "RAM available (of 1.0 GB)"))
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded anyway"))
    with pytest.raises(ModelTooLarge, match="'tiny-llama' needs about"):
        load_base(source)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", real)
    monkeypatch.setenv("CHORUS_MEMORY_CHECK", "0")
    assert load_base(source)[2].name == "tiny-llama"


def test_the_command_line_says_it_in_one_line(tiny_model_dir, monkeypatch, capsys):
    import app

    monkeypatch.setattr(memory_fit, "free_bytes", lambda device: (10**6, "RAM available (of 1.0 GB)"))
    assert app.main(["chat", "juniper", "hi", "--model", str(tiny_model_dir), "--context-limit", "256"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "(256 tokens x 1 row)" in err and "Traceback" not in err
