"""On the embedded SmolLM2-135M in NF4 with rank-16 adapters on every linear layer (the
shapes the benchmark measures), against stock peft: bitwise where the same kernels run on
the same shapes (a persona's prompt, and its decode steps on the reference path); within
bf16 rounding with the same greedy tokens where the kernels differ (torch.mv decode steps,
a batch of per-row adapters against peft's adapter_names batch)."""

import pytest
import torch

from core.engine import AdapterRef, Engine, GenerationSettings
from core.model_source import EMBEDDED_NAME, ModelSource
from tests.rounding import assert_within_bf16_rounding

pytestmark = pytest.mark.embedded


def steps(model, ids, n=4, **extra):
    out = []
    with torch.inference_mode():
        o = model(input_ids=ids, use_cache=True, **extra)
        out.append(o.logits[:, -1])
        for _ in range(n):
            o = model(input_ids=o.logits[:, -1:].argmax(-1), past_key_values=o.past_key_values, use_cache=True, **extra)
            out.append(o.logits[:, -1])
    return torch.stack(out)


def test_lean_paths_match_stock_peft_on_the_embedded_model(embedded_model_dir, tmp_path):
    from peft import PeftModel

    from core.loader import load_base
    from core.synthetic import ALL_LINEAR, make_random_adapter

    source = ModelSource(EMBEDDED_NAME, embedded_model_dir)
    folders = {
        name: make_random_adapter(embedded_model_dir, tmp_path / name, seed=seed, rank=16, alpha=alpha,
                                  targets=ALL_LINEAR, scale=0.3, base_name=EMBEDDED_NAME)
        for name, seed, alpha in (("two", 1, 32), ("odd", 2, 24))  # scale 2 is folded into B, 1.5 is not
    }
    engine = Engine.load(source, max_resident=2)
    assert engine.status()["fast_paths"]["ok"], engine.status()["fast_paths"]
    model, tok, _ = load_base(source)
    stock = PeftModel.from_pretrained(model, str(folders["two"]), adapter_name="two")
    stock.load_adapter(str(folders["odd"]), adapter_name="odd")
    stock.eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True, tokenize=True)
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    x = torch.tensor([ids])
    slots = {n: engine.ensure_adapter(AdapterRef(n, f)) for n, f in folders.items()}
    for name, slot in slots.items():
        engine.pool.activate(slot)
        stock.set_adapter(name)
        theirs = steps(stock, x)
        fast = steps(engine.model, x)
        assert torch.equal(fast[0], theirs[0]), name  # the prompt: F.linear on the same shapes as peft
        assert_within_bf16_rounding(fast, theirs)  # decode steps: torch.mv against F.linear
        engine.pool.fast.use_vector(False)  # the reference path: F.linear on peft's shapes
        try:
            assert torch.equal(steps(engine.model, x), theirs), name
        finally:
            engine.pool.fast.use_vector(True)
    engine.pool.activate(None)
    rows = ["two", None, "odd", "two"]
    batch = torch.tensor([ids] * 4)
    with torch.inference_mode(), engine.pool.rows([slots[n] if n else None for n in rows]) as lean:
        assert lean
        ours = steps(engine.model, batch)
    # Per-row products against peft's per-adapter sub-batches: other kernel shapes.
    assert_within_bf16_rounding(ours, steps(stock, batch, adapter_names=[n or "__base__" for n in rows]))
    settings = GenerationSettings(temperature=0, max_new_tokens=16, seed=1)
    alone = [engine.generate(ids, AdapterRef(n, folders[n]) if n else None, settings) for n in rows]
    assert engine.generate_group([(ids, AdapterRef(n, folders[n]) if n else None) for n in rows], settings) == alone
