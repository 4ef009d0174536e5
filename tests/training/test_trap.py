"""The CPU trap (../shared/FINDINGS.md): after any evaluation the training does, the
gradient reaching the lowest LoRA layer must be exactly what it was before."""

import pytest
import torch

from core.model_source import ModelSource
from core.training.config import TrainConfig, plan
from core.training.dataset import Collator, encode_all
from core.training.evaluate import heldout_loss, sample_replies
from core.training.qlora import add_lora, disable_cpu_packing, load_for_training, lowest_lora_a, packed_layers

EXAMPLES = [
    {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"Arr, answer {i}, matey."}]}
    for i in range(6)
]


def _model(tiny_model_dir):
    model, tok, info = load_for_training(ModelSource("tiny-llama", tiny_model_dir))
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8, dropout=0.0), gradient_checkpointing=False)
    with torch.no_grad():  # lora_B starts at 0, which would make every lora_A gradient 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    items = encode_all(tok, "You are Mara.", EXAMPLES, 64).items
    return model, tok, items


def _grad(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return lowest_lora_a(model)[1].grad.detach().clone()


def test_gradients_reach_layer_0_after_every_evaluation(tiny_model_dir):
    model, tok, items = _model(tiny_model_dir)
    batch = Collator(tok.pad_token_id)(items[:2])
    reference = _grad(model, batch)
    assert reference.norm() > 0

    def same_after(what, fn):
        fn()
        assert packed_layers(model) == 0, what
        assert torch.allclose(_grad(model, batch), reference, rtol=1e-4, atol=1e-7), what

    same_after("held-out loss, base", lambda: heldout_loss(model, items, tok.pad_token_id, adapter=False))
    same_after("held-out loss, adapter", lambda: heldout_loss(model, items, tok.pad_token_id, adapter=True))
    same_after("sample replies", lambda: sample_replies(model, tok, {"name": "Mara"}, [{"turns": EXAMPLES[0]["messages"][:1], "real": "x"}], seed=0, max_new_tokens=3))

    def trainer_evaluate():  # the evaluation Trainer runs every eval_every steps (model.eval() inside)
        from transformers import Trainer, TrainingArguments

        from core.training.dataset import ListDataset

        args = TrainingArguments(output_dir=str(tiny_model_dir.parent / "unused"), use_cpu=True, report_to=[], per_device_eval_batch_size=2)
        Trainer(model=model, args=args, eval_dataset=ListDataset(items), data_collator=Collator(tok.pad_token_id)).evaluate()

    same_after("Trainer.evaluate", trainer_evaluate)
    same_after("a plain eval-mode forward", lambda: (model.eval(), model(**batch)))


def test_a_short_fit_with_evaluations_keeps_the_layers_unpacked(tiny_model_dir, tmp_path):
    from core.training.trainer import fit

    model, tok, items = _model(tiny_model_dir)
    cfg = TrainConfig(max_steps=3, batch_size=2, eval_every=1, save_every=100, nice=0)
    p = plan(cfg, len(items), 2, [len(i["input_ids"]) for i in items], "cpu")
    rows = []
    fit(model, tok, items, items[:2], p, cfg, tmp_path, report=rows.append)
    assert [r["step"] for r in rows if r["event"] == "eval"] == [1, 2, 3]
    assert packed_layers(model) == 0


def test_the_trap_is_real_without_the_guard(tiny_model_dir):
    """Control: the same check fails on an unguarded model, so the test above can fail."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    model, tok, items = _model(tiny_model_dir)
    batch = Collator(tok.pad_token_id)(items[:2])
    reference = _grad(model, batch)
    for m in model.modules():  # undo the guard
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = True
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert packed_layers(model) > 0
    assert not torch.allclose(_grad(model, batch), reference, rtol=1e-4, atol=1e-7)
    assert disable_cpu_packing(model) > 0 and packed_layers(model) == 0  # the guard also undoes it
