"""The dtype a training run computes in (core.device.training_dtype): bf16 where the
device has fast bf16 matmuls, fp32 on CPUs without them (AVX2 only), where bf16 ran a
training step 30x slower; CHORUS_TRAIN_DTYPE forces one."""

import pytest
import torch
from transformers import LlamaConfig

from core.device import cpu_has_fast_bf16, training_dtype
from core.errors import ChorusError
from core.model_source import ModelSource
from core.training.config import TrainConfig, activation_bytes_per_token
from core.training.dataset import Collator, encode_all
from core.training.loss import loss_sum
from core.training.qlora import add_lora, load_for_training, packed_layers


def test_the_default_follows_the_cpu(monkeypatch):
    monkeypatch.delenv("CHORUS_TRAIN_DTYPE", raising=False)
    assert training_dtype("cpu") == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert training_dtype("cuda") == torch.bfloat16


def test_a_bad_setting_says_what_to_do(monkeypatch):
    monkeypatch.setenv("CHORUS_TRAIN_DTYPE", "half")
    with pytest.raises(ChorusError, match="CHORUS_TRAIN_DTYPE='half' is not one of bf16, fp32"):
        training_dtype("cpu")


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_forced_dtype_loads_and_trains(monkeypatch, tiny_model_dir, name, dtype):
    monkeypatch.setenv("CHORUS_TRAIN_DTYPE", name)
    model, tok, info = load_for_training(ModelSource("tiny-llama", tiny_model_dir))
    assert model.get_input_embeddings().weight.dtype == dtype
    assert f"{name} compute" in info.quantization
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8), gradient_checkpointing=False)
    examples = [{"messages": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "Arr, matey. " * 3}]}] * 2
    batch = Collator(tok.pad_token_id)(encode_all(tok, "You are Mara.", examples, 64).items)
    total, n = loss_sum(model, batch)
    (total / n).backward()
    grads = [p.grad for name_, p in model.named_parameters() if "lora_B" in name_]  # lora_B starts at 0: A's grads are 0
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert not packed_layers(model)


def test_fp32_activations_are_planned_at_twice_the_bytes():
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    config.dtype = torch.bfloat16
    half = activation_bytes_per_token(config, checkpointing=False)
    config.dtype = torch.float32
    assert activation_bytes_per_token(config, checkpointing=False) == 2 * half
