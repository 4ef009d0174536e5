"""QLoRA on every family (core/synthetic_families.py): LoRA on the family's own linear
layers (Phi-3's fused qkv_proj and gate_up_proj, not Llama's names), five steps through the
real trainer with held-out evaluations between them, the training loss going down, and the
CPU trap check (../shared/FINDINGS.md): the gradient reaching the lowest LoRA layer is the
same before and after an evaluation."""

from __future__ import annotations

import pytest
import torch

from core.synthetic_families import linear_names
from core.training.config import TrainConfig, TrainConfigInvalid
from core.training.dataset import Collator, encode_all
from core.training.evaluate import heldout_loss
from core.training.qlora import add_lora, load_for_training, lowest_lora_a, packed_layers
from tests.families.conftest import source_for

EXAMPLES = [
    {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"Arr, answer {i}, matey."}]}
    for i in range(6)
]


def _grad(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return lowest_lora_a(model)[1].grad.detach().clone()


def test_five_qlora_steps_learn_on_the_familys_own_layers(family, family_dir):
    """Five AdamW steps on the guarded QLoRA model after evaluations (the real trainer runs
    on Phi-3 below and on the Llama in tests/training/)."""
    model, tok, _ = load_for_training(source_for(family_dir))
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8, dropout=0.0), gradient_checkpointing=False)
    assert set(model.peft_config["default"].target_modules) == set(linear_names(family))
    items = encode_all(tok, "You are Mara.", EXAMPLES, 64).items
    batch = Collator(tok.pad_token_id)(items)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    # The trap: an evaluation must not change the gradient reaching layer 0 (lora_B is
    # made non-zero first, or every lora_A gradient would be 0; put back after).
    with torch.no_grad():
        saved = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        for n, p in model.named_parameters():
            if n in saved:
                p.normal_(0, 0.05)
    reference = _grad(model, batch)
    assert reference.norm() > 0
    heldout_loss(model, items, tok.pad_token_id)
    assert packed_layers(model) == 0
    assert torch.allclose(_grad(model, batch), reference, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])

    optimizer = torch.optim.AdamW(params, lr=1e-2)
    before, losses = heldout_loss(model, items, tok.pad_token_id)["loss"], []
    for _ in range(5):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    after = heldout_loss(model, items, tok.pad_token_id)["loss"]
    assert losses[-1] < losses[0] and after < before, (losses, before, after)
    assert packed_layers(model) == 0  # evaluated before, between and after without repacking a layer


def test_named_targets_the_model_lacks_are_refused_with_its_own_names():
    from transformers import AutoModelForCausalLM, Phi3Config

    from core.training.qlora import lora_targets

    phi3 = AutoModelForCausalLM.from_config(Phi3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    assert lora_targets(phi3, TrainConfig().target_modules) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert lora_targets(phi3, ["qkv_proj"]) == ["qkv_proj"]
    with pytest.raises(TrainConfigInvalid, match="no linear layer named q_proj, v_proj; its linear layers are down_proj, gate_up_proj, o_proj, qkv_proj"):
        lora_targets(phi3, ["q_proj", "v_proj"])


def test_phi3_trains_through_the_service_and_its_persona_speaks(tokenizer_dir, chorus_home):
    """The issue's failure, end to end: a Phi-3 persona trained by the worker process
    (LoRA on qkv_proj and gate_up_proj), registered, hot-loaded and replying."""
    import json

    from core.chat import ChatService
    from core.engine import Engine, GenerationSettings
    from core.training.service import TrainingService
    from storage.store import Store
    from tests.families.conftest import family_dir_for
    from tests.training.conftest import SHAREGPT, tiny_config

    store = Store()
    engine = Engine.load(source_for(family_dir_for("phi3", tokenizer_dir)), max_resident=2)
    svc = TrainingService(store, engine)
    svc.mark_seen()
    run_id = svc.start(SHAREGPT, "gpt", persona_name="Phi", consent=True, config=tiny_config(max_steps=2, samples=0, voice_k=0))
    st = svc.wait(run_id, timeout=300)
    assert st["state"] == "finished", st["error"]
    persona = store.personas.get(st["persona_id"])
    adapter = store.adapters.get(persona["adapter_id"])
    cfg = json.loads((store.adapters.folder(adapter) / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == set(linear_names("phi3"))
    folder = store.adapters.folder(adapter)  # the adapter describes what it really targets
    assert "qkv_proj" in (folder / "README.md").read_text()
    assert set(json.loads((folder / "training_config.json").read_text())["config"]["target_modules"]) == set(linear_names("phi3"))
    assert [r["id"] for r in svc.poll()] == [run_id] and persona["id"] in engine.resident()
    chat = ChatService(store, engine)
    conv = chat.start_conversation(persona["id"])
    events = list(chat.send(conv["id"], persona["id"], "Who are you?", GenerationSettings(max_new_tokens=4, seed=1)))
    assert events[-1].message["meta"]["adapter_sha256"] == adapter["sha256"]


def _loss_and_grads(model, batch):
    from core.training.loss import loss_sum

    model.zero_grad(set_to_none=True)
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, n = loss_sum(model, batch)
    (total / n).backward()
    return total.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}, sum(kept.values())


def test_recomputed_norms_and_mlp_activation_change_no_bit(family, family_dir, monkeypatch):
    """core/training/lean_blocks.py: the norms and the gated MLP's activation are recomputed
    in the backward pass with the same ops on the same inputs, so the loss and every LoRA
    gradient are bitwise those of the family's own forward, and less is kept. In bf16, the
    dtype whose norms keep an fp32 copy (fp32 runs keep none to save; CPUs without fast
    bf16 train in fp32, core.device.training_dtype)."""
    monkeypatch.setenv("CHORUS_TRAIN_DTYPE", "bf16")
    model, tok, _ = load_for_training(source_for(family_dir))
    torch.manual_seed(0)
    model = add_lora(model, TrainConfig(rank=4, alpha=8, dropout=0.0), gradient_checkpointing=False)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    recomputed = [m for m in model.modules() if getattr(m, "_chorus_recompute", False)]
    layers = model.get_base_model().config.num_hidden_layers
    assert len(recomputed) >= 2 * layers + 1  # two norms per layer and the final one, at least
    batch = Collator(tok.pad_token_id)(encode_all(tok, "You are Mara.", EXAMPLES, 64).items)
    loss, grads, kept = _loss_and_grads(model, batch)
    for m in recomputed:
        del m.forward  # the family's own forward again
    ref_loss, ref_grads, ref_kept = _loss_and_grads(model, batch)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert torch.equal(grads[k], ref_grads[k]), k
    # at least the two norms' fp32 copies of each layer's input, less the bf16 input kept instead
    hidden = model.get_base_model().config.hidden_size
    assert ref_kept - kept >= 2 * layers * batch["input_ids"].numel() * hidden * 2, (ref_kept, kept)
