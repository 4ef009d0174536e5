"""The chunked loss (core/training/loss.py): the same loss and LoRA gradients as the model's
own full-logits loss, no tensor of the full vocabulary x all positions, and one
token-weighted measure in the Trainer's steps, its evaluations and the held-out loss."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.model_source import ModelSource
from core.training.config import TrainConfig, plan
from core.training.dataset import Collator, encode_all
from core.training.evaluate import heldout_loss
from core.training.loss import loss_sum
from core.training.qlora import add_lora, load_for_training

# Replies of different lengths, so that rows of a batch carry different numbers of labels.
EXAMPLES = [
    {"messages": [{"role": "user", "content": f"question {i}? " * (1 + i % 3)}, {"role": "assistant", "content": "Arr, matey. " * (1 + i)}]}
    for i in range(8)
]
BF16_ULP = 2.0**-8  # relative rounding of one bf16 number (8 significant bits)


def _model(tiny_model_dir, dropout=0.0):
    model, tok, _ = load_for_training(ModelSource("tiny-llama", tiny_model_dir))
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8, dropout=dropout), gradient_checkpointing=False)
    with torch.no_grad():  # lora_B starts at 0, which would make every lora_A gradient 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tok, encode_all(tok, "You are Mara.", EXAMPLES, 128).items


def _lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_chunked_loss_and_lora_gradients_match_the_full_logits_loss(tiny_model_dir):
    model, tok, items = _model(tiny_model_dir)
    assert model.training and model.get_base_model().config.tie_word_embeddings  # the tied head case
    batch = Collator(tok.pad_token_id)(items[:4])

    model.zero_grad(set_to_none=True)
    out = model(**batch)  # transformers' own loss: fp32 logits of every position, mean over labels
    out.loss.backward()
    reference, ref_grads = float(out.loss), _lora_grads(model)
    max_logit = float(out.logits.abs().max())

    model.zero_grad(set_to_none=True)
    total, n = loss_sum(model, batch, rows=7)  # 7 rows per chunk: many chunks and a ragged last one
    (total / n).backward()
    grads = _lora_grads(model)

    assert n == int((batch["labels"][:, 1:] != -100).sum()) > 7 * 3
    # Same bf16 hidden states and head; only the head's GEMM runs on other shapes, which may
    # round a bf16 logit differently by one unit: the loss of a token moves by at most
    # 2 x that (its logit and the log-sum-exp), so the mean moves by at most as much.
    assert abs(float(total / n) - reference) <= 2 * BF16_ULP * max_logit
    assert set(grads) == set(ref_grads) and len(grads) > 10
    for name, g in grads.items():  # every LoRA matrix, layer 0 included (see the CPU trap)
        ref = ref_grads[name]
        assert ref.norm() > 0, name
        assert float((g - ref).norm() / ref.norm()) < 1e-2, name


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation allocates (forward, backward, recomputation);
    views of an argument (a transposed weight) allocate nothing and are skipped."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_the_full_vocabulary_for_every_position(tiny_model_dir):
    """The tiny model has SmolLM2's 49,152-token vocabulary: the full logits of 4 x ~60
    positions would be 12 M numbers; the chunked loss never holds more than a chunk."""
    model, tok, items = _model(tiny_model_dir)
    batch = Collator(tok.pad_token_id)(items[:4])
    vocab = model.get_base_model().config.vocab_size
    full = batch["input_ids"].numel() * vocab

    with _LargestTensor() as probe:
        total, n = loss_sum(model, batch, rows=16)
        (total / n).backward()
    assert probe.largest <= 16 * vocab < full / 10

    with _LargestTensor() as control:  # the probe sees the full logits where they exist
        model(**batch).loss.backward()
    assert control.largest >= full


def test_the_trainers_eval_loss_is_the_heldout_loss_and_accumulation_keeps_the_batch(tiny_model_dir, tmp_path):
    from core.training.trainer import fit

    first_losses = {}
    for micro in (4, 1):  # one forward of 4 examples, or 4 micro-batches of 1 accumulated
        model, tok, items = _model(tiny_model_dir)
        cfg = TrainConfig(max_steps=2, batch_size=4, micro_batch_size=micro, eval_every=2, save_every=100, nice=0)
        p = plan(cfg, len(items), 2, [len(i["input_ids"]) for i in items], "cpu")
        assert (p.micro_batch_size, p.grad_accum) == (micro, 4 // micro)
        rows = []
        fit(model, tok, items[:4], items[4:], p, cfg, tmp_path / f"m{micro}", report=rows.append)
        first_losses[micro] = next(r["loss"] for r in rows if r["event"] == "train")
        evals = [r["eval_loss"] for r in rows if r["event"] == "eval"]
        assert len(evals) == 1
        # the Trainer's validation point and the "after" figure are the same measure
        after = heldout_loss(model, items[4:], tok.pad_token_id, adapter=True, batch_size=3)
        assert evals[0] == pytest.approx(after["loss"], abs=2e-4)
    # step 1 is the token-weighted loss of the same 4 examples either way (ordering of the
    # sum and padding width differ: float rounding only)
    assert first_losses[1] == pytest.approx(first_losses[4], rel=1e-3)


def test_the_micro_batch_comes_from_the_memory_budget():
    from types import SimpleNamespace

    from core.training.config import activation_bytes_per_token

    smollm2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    per_token = activation_bytes_per_token(smollm2, checkpointing=False)
    assert 1.07e6 <= per_token < 1.4e6  # measured: 1.07 MB per token without LoRA dropout (peak RSS, micro-batches of 4 and 8 x 192)
    assert 2.2e6 < activation_bytes_per_token(smollm2, checkpointing=False, dropout=True) < 2.6e6  # 2.4 measured with dropout, micro-batch 8
    lengths = [150] * 180
    cpu = plan(TrainConfig(), 180, 20, lengths, "cpu", smollm2, free_mb=8192)  # an eighth of the free memory
    assert (cpu.max_seq_len, cpu.batch_size, cpu.micro_batch_size, cpu.grad_accum) == (192, 8, 4, 2)
    assert cpu.micro_batch_size * cpu.max_seq_len * per_token <= 1024 << 20
    roomy = plan(TrainConfig(memory_budget_mb=8192), 180, 20, lengths, "cpu", smollm2)
    assert (roomy.micro_batch_size, roomy.grad_accum) == (8, 1)
    tight = plan(TrainConfig(memory_budget_mb=64, gradient_checkpointing=False), 180, 20, lengths, "cpu", smollm2)
    assert (tight.micro_batch_size, tight.grad_accum) == (1, 8)  # never below one example
    auto = plan(TrainConfig(memory_budget_mb=64), 180, 20, lengths, "cpu", smollm2)
    assert auto.gradient_checkpointing  # one example does not fit without it
    cuda = plan(TrainConfig(), 180, 20, lengths, "cuda", smollm2, free_mb=8192)  # the whole batch fits: no recompute
    assert (cuda.micro_batch_size, cuda.optimizer, cuda.gradient_checkpointing) == (8, "paged_adamw_8bit", False)
    small = plan(TrainConfig(), 180, 20, lengths, "cuda", smollm2, free_mb=2048)  # it does not: checkpointed layers keep little
    assert (small.micro_batch_size, small.gradient_checkpointing) == (8, True)
    fixed = plan(TrainConfig(micro_batch_size=4), 180, 20, lengths, "cpu", smollm2)
    assert fixed.micro_batch_size == 4  # a micro-batch the user names is kept


def test_evaluation_tensors_go_to_the_models_device(tiny_model_dir, monkeypatch):
    """On a GPU the model is on cuda:0 with no hooks that would move CPU inputs, so every
    tensor evaluate.py builds must pass through core.device.on_model (checked by identity:
    the decoder receives exactly the tensors on_model returned)."""
    import core.training.evaluate as evaluate
    from core.device import on_model
    from core.training.evaluate import sample_replies

    model, tok, items = _model(tiny_model_dir)
    placed = []

    def spy(m, data, dtype=None):
        out = on_model(m, data, dtype)
        placed.append(out)
        return out

    monkeypatch.setattr(evaluate, "on_model", spy)
    received = []
    decoder = model.get_base_model().get_decoder()
    handle = decoder.register_forward_pre_hook(lambda mod, args, kwargs: received.append(kwargs["input_ids"]), with_kwargs=True)
    try:
        heldout_loss(model, items[:3], tok.pad_token_id, batch_size=2)
        assert received and all(any(r is p for p in placed) for r in received)
        n = len(placed)
        sample_replies(model, tok, {"name": "Mara"}, [{"turns": EXAMPLES[0]["messages"][:1], "real": "x"}], seed=0, max_new_tokens=2)
        assert len(placed) > n  # the prompt ids too
    finally:
        handle.remove()
