"""Training defaults by model size and device memory (core/training/sizing.py, `plan`), on
the configs of real models built from their config classes: no weights, the parameters are
counted on the meta device. A CPU with 32 GB free and a 24 GB GPU with the model loaded."""

from __future__ import annotations

import pytest

from core.training.config import TrainConfig, activation_bytes_per_token, plan
from core.training.sizing import LR_BY_SIZE, parameter_count

GPU_MB = 24 * 1024


def _configs():
    from transformers import LlamaConfig, Qwen2Config

    return {
        # SmolLM2-135M: a Llama with a 49k vocabulary and a tied head
        "135M": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                            num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
        # Qwen2.5-0.5B and 1.5B: a 152k vocabulary, q/k/v biases, tied heads
        "0.5B": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                            num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
        "1.5B": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                            num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
        # Llama 3.1 8B: a 128k vocabulary, an untied head
        "8B": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    }


@pytest.fixture(scope="module")
def configs():
    return _configs()


@pytest.fixture(scope="module")
def weights_mb(configs):
    """NF4 weights of each model, so the 24 GB GPU's free memory is what is left once it is loaded."""
    from core.memory_fit import estimate

    return {k: estimate(c, context=1).weights_bytes >> 20 for k, c in configs.items()}


LENGTHS = [400] * 2000  # a long chat: sequences of 448 tokens, more data than any step cap


def _plans(configs, device, free):
    return {k: plan(TrainConfig(), len(LENGTHS), 200, LENGTHS, device, c, free_mb=free(k)) for k, c in configs.items()}


def test_parameters_are_counted_from_the_config(configs):
    counts = {k: parameter_count(c) for k, c in configs.items()}
    for key, published in (("135M", 134.5e6), ("0.5B", 494e6), ("1.5B", 1.54e9), ("8B", 8.03e9)):
        assert counts[key] == pytest.approx(published, rel=0.02), key


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_defaults_follow_the_model_size(configs, weights_mb, device):
    free = (lambda k: 32 * 1024) if device == "cpu" else (lambda k: GPU_MB - weights_mb[k])
    plans = _plans(configs, device, free)
    order = ["135M", "0.5B", "1.5B", "8B"]
    rates = [plans[k].learning_rate for k in order]
    assert rates == [1e-3, 5e-4, 3e-4, 2e-4]  # 1e-3 is too hot for 1B+; QLoRA's 2e-4 for 7-8B
    assert rates == sorted(rates, reverse=True)
    caps = [plans[k].step_cap for k in order]
    assert caps == sorted(caps, reverse=True) and all(plans[k].steps == plans[k].step_cap for k in order)
    for k in order:
        p = plans[k]
        assert p.params == parameter_count(configs[k]) and p.max_seq_len == 448
        assert p.micro_batch_size * p.grad_accum == p.batch_size == 8
        # what one micro-batch keeps for the backward pass fits the budget (or is one example
        # with checkpointing, the least there is)
        per_token = activation_bytes_per_token(configs[k], checkpointing=p.gradient_checkpointing)
        assert p.micro_batch_size * p.max_seq_len * per_token <= p.memory_budget_mb << 20
    if device == "cpu":
        assert caps == [150, 100, 60, 40]
        assert plans["135M"].memory_budget_mb == 1536  # an eighth of 32 GB, capped at 1.5 GB on the CPU
        assert not plans["135M"].gradient_checkpointing  # small: fewer examples per pass instead
        assert plans["8B"].gradient_checkpointing  # one 8B example does not fit without it
        micros = [plans[k].micro_batch_size for k in order if not plans[k].gradient_checkpointing]
        assert micros == sorted(micros, reverse=True)  # larger models: smaller micro-batches
    else:
        assert all(p.optimizer == "paged_adamw_8bit" for p in plans.values())
        assert not plans["135M"].gradient_checkpointing and plans["135M"].micro_batch_size == 8  # the whole batch fits
        assert plans["8B"].gradient_checkpointing and plans["8B"].grad_accum <= 2  # checkpointed: large micro-batches


def test_the_same_model_on_less_memory_takes_smaller_micro_batches(configs):
    cfg = configs["135M"]  # on the CPU the budget stops at 1 GB: a small model shows the difference
    roomy, tight = (plan(TrainConfig(), 500, 50, LENGTHS, "cpu", cfg, free_mb=mb) for mb in (64 * 1024, 4 * 1024))
    assert tight.memory_budget_mb < roomy.memory_budget_mb
    assert not roomy.gradient_checkpointing and roomy.micro_batch_size > 1
    assert tight.micro_batch_size < roomy.micro_batch_size  # one example at a time (or checkpointed)
    assert tight.micro_batch_size * tight.grad_accum == 8


def test_what_the_user_sets_wins(configs):
    p = plan(TrainConfig(learning_rate=1e-3, max_auto_steps=500, gradient_checkpointing=False, micro_batch_size=2),
             len(LENGTHS), 200, LENGTHS, "cpu", configs["8B"], free_mb=1024)
    assert (p.learning_rate, p.step_cap, p.steps, p.gradient_checkpointing, p.micro_batch_size) == (1e-3, 500, 500, False, 2)


def test_without_a_model_config_the_old_defaults_hold():
    p = plan(TrainConfig(), 50_000, 100, [150] * 10, "cpu")
    assert (p.learning_rate, p.step_cap, p.micro_batch_size, p.params) == (LR_BY_SIZE[0][1], 150, 8, None)
