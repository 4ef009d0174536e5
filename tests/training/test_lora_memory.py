"""The lean LoRA training forward (core/training/lora_memory.py): the loss and LoRA gradients
of peft's own forward, without keeping an fp32 copy of every layer input."""

import torch

from core.model_source import ModelSource
from core.training.config import TrainConfig
from core.training.dataset import Collator, encode_all
from core.training.loss import loss_sum
from core.training.qlora import add_lora, load_for_training

EXAMPLES = [
    {"messages": [{"role": "user", "content": f"question {i}? " * (1 + i % 3)}, {"role": "assistant", "content": "Arr, matey. " * (1 + i)}]}
    for i in range(4)
]
BF16_ULP = 2.0**-8


def _model(tiny_model_dir, dropout=0.0):
    model, tok, _ = load_for_training(ModelSource("tiny-llama", tiny_model_dir))
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8, dropout=dropout), gradient_checkpointing=False)
    with torch.no_grad():  # lora_B starts at 0, which would make every lora_A gradient 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, Collator(tok.pad_token_id)(encode_all(tok, "You are Mara.", EXAMPLES, 128).items)


def _step(model, batch):
    """(loss, LoRA gradients, bytes of the distinct storages autograd kept)."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, n = loss_sum(model, batch)
    (total / n).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(total / n), grads, sum(kept.values())


def _peft_forward(model):
    """Back to peft's own forward on every layer."""
    for m in model.modules():
        if getattr(m, "_chorus_lean", False):
            del m.forward
            m._chorus_lean = False


def test_lean_forward_gives_peft_gradients_and_keeps_less(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CHORUS_TRAIN_DTYPE", "bf16")  # peft's fp32 copy of a bf16 input is what is saved
    model, batch = _model(tiny_model_dir)
    lean = [m for m in model.modules() if getattr(m, "_chorus_lean", False)]
    assert len(lean) == 7 * model.get_base_model().config.num_hidden_layers  # every LoRA layer
    loss, grads, kept = _step(model, batch)
    _peft_forward(model)
    ref_loss, ref_grads, ref_kept = _step(model, batch)

    # The forward runs peft's kernels on peft's shapes: the same loss, bit for bit.
    assert loss == ref_loss
    # The backward folds the batch into one matrix product where autograd may not: sums in
    # another order, in fp32, from bf16 upstream gradients; allow a bf16 rounding of the largest.
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        scale = float(ref_grads[name].abs().max())
        assert scale > 0, name
        assert float((g - ref_grads[name]).abs().max()) <= 2 * BF16_ULP * scale, name
    # peft keeps an fp32 copy of the input of each of the 7 LoRA layers per decoder layer
    cfg = model.get_base_model().config
    tokens = batch["input_ids"].numel()
    fp32_copies = cfg.num_hidden_layers * tokens * 4 * (6 * cfg.hidden_size + cfg.intermediate_size)
    assert ref_kept - kept >= 0.6 * fp32_copies, (ref_kept, kept, fp32_copies)


def test_dropout_runs_peft_own_forward(tiny_model_dir):
    model, batch = _model(tiny_model_dir, dropout=0.1)
    model.train()
    _, _, kept = _step(model, batch)
    _peft_forward(model)
    _, _, ref_kept = _step(model, batch)
    assert kept == ref_kept  # the same tensors kept: peft's path, dropout masks and all
