"""The fast serving paths against stock peft: bitwise where the same kernels run on the same
shapes (prompts, the reference decode path, folded scales, reloads read straight into the
slot); within bf16 rounding with the same greedy tokens where they differ (torch.mv against
F.linear, per-row adapters against peft's mixed batches); and the decode thread policy."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.engine.adapter_io import WeightsFile
from core.engine import AdapterRef, GenerationSettings
from core.engine.model_hooks import DecodeThreads
from core.errors import AdapterCorrupt
from core.engine.lora_fast import exact_fold, self_check
from tests.rounding import assert_within_bf16_rounding

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


def greedy(n=12):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=3)


def ref(name, folder):
    return AdapterRef(name, folder)


def stock_model(tiny_model_dir, adapters: dict):
    """An independent stock peft model over its own NF4 copy, with `adapters` loaded."""
    from peft import PeftModel

    from core.loader import load_base
    from core.model_source import ModelSource

    model, tok, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    names = list(adapters)
    stock = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        stock.load_adapter(str(adapters[n]), adapter_name=n)
    stock.eval()
    return stock, tok


def step_logits(model, ids, steps=6, **extra):
    """Logits of a prompt and of `steps` greedy one-token steps through the KV cache."""
    out = []
    with torch.inference_mode():
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **extra)
        out.append(o.logits[:, -1])
        mask = torch.ones_like(ids)
        for _ in range(steps):
            nxt = o.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            o = model(input_ids=nxt, attention_mask=mask, past_key_values=o.past_key_values, use_cache=True, **extra)
            out.append(o.logits[:, -1])
    return torch.stack(out)


@pytest.fixture(scope="module")
def scaled_adapters(tiny_model_dir, tmp_path_factory):
    """Scales 4 (folded into B), 1.5 (kept as a multiply) and 1 (nothing to do)."""
    from core.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("scaled")
    return {
        "four": make_random_adapter(tiny_model_dir, root / "four", seed=11, rank=4, alpha=16),
        "odd": make_random_adapter(tiny_model_dir, root / "odd", seed=12, rank=4, alpha=6),
        "one": make_random_adapter(tiny_model_dir, root / "one", seed=13, rank=4, alpha=4),
    }


def test_lean_forward_matches_stock_peft_bitwise_where_the_kernels_are_the_same(stock_kernels_engine, tiny_model_dir, scaled_adapters):
    stock, _ = stock_model(tiny_model_dir, scaled_adapters)
    ids = torch.tensor([PROMPT])
    for name, folder in scaled_adapters.items():
        slot = stock_kernels_engine.ensure_adapter(ref(name, folder))
        stock_kernels_engine.pool.activate(slot)
        stock.set_adapter(name)
        ours, theirs = step_logits(stock_kernels_engine.model, ids), step_logits(stock, ids)
        assert torch.equal(ours[0], theirs[0]), name  # the prompt: F.linear on peft's shapes
        assert_within_bf16_rounding(ours, theirs)  # decode steps: torch.mv, another kernel
        stock_kernels_engine.pool.fast.use_vector(False)  # the reference path: F.linear for one token too
        try:
            assert torch.equal(step_logits(stock_kernels_engine.model, ids), theirs), name
        finally:
            stock_kernels_engine.pool.fast.use_vector(True)
    stock_kernels_engine.pool.activate(None)
    with stock.disable_adapter():
        assert torch.equal(step_logits(stock_kernels_engine.model, ids), step_logits(stock, ids))
    layer = stock_kernels_engine.model.model.layers[0].self_attn.q_proj
    assert "_chorus" in layer.__dict__  # the lean forward is what ran


def test_scales_fold_into_b_only_where_exact(tiny_engine, scaled_adapters):
    for name, left in (("four", 1.0), ("odd", 1.5), ("one", 1.0)):
        slot = tiny_engine.ensure_adapter(ref(name, scaled_adapters[name]))
        layer = tiny_engine.model.model.layers[1].mlp.down_proj  # peft's wrapper, once there is one
        saved = load_file(str(scaled_adapters[name] / "adapter_model.safetensors"))
        b = next(v for k, v in saved.items() if "layers.1.mlp.down_proj.lora_B" in k)
        assert layer.scaling[slot] == left
        assert torch.equal(layer.lora_B[slot].weight, b * (4.0 if name == "four" else 1.0))
    assert [exact_fold(s) for s in (1.0, 2.0, 0.25, 64.0, 1.5, 3.0, 0.0, -2.0, math.inf)] == [True] * 4 + [False] * 5


@pytest.mark.parametrize("shape", [(576, 576, 16), (576, 192, 16), (576, 1536, 16), (1536, 576, 16), (64, 64, 4), (64, 128, 4), (128, 64, 4)])
def test_matrix_vector_products_agree_with_linear_within_bf16_rounding(shape):
    """What the one-token paths rely on, for SmolLM2's and the tiny model's LoRA shapes
    (in, out, rank): the bound of lora_fast.self_check (derived there), on many inputs."""
    n_in, n_out, rank = shape
    for seed in range(10):
        assert self_check([(n_in, n_out)], rank=rank, seed=seed) is None


def test_the_self_check_bound_catches_a_kernel_that_is_off():
    import core.engine.lora_fast as lora_fast

    real = lora_fast._mv
    lora_fast._mv = lambda w, x, out=None: real(w, x, out=out).mul_(1.02)  # 2% off: a broken kernel
    try:
        assert "differ beyond bf16 rounding" in self_check([(576, 576)])
    finally:
        lora_fast._mv = real


def test_rows_match_peft_mixed_batches_within_bf16_rounding(stock_kernels_engine, tiny_model_dir, tiny_adapters):
    stock, tok = stock_model(tiny_model_dir, tiny_adapters)
    names = ["a", None, "c", "a"]
    slots = [stock_kernels_engine.ensure_adapter(ref(n, tiny_adapters[n])) if n else None for n in names]
    ids = torch.tensor([PROMPT] * 4)
    stock_kernels_engine.pool.activate(None)
    with torch.inference_mode(), stock_kernels_engine.pool.rows(slots) as lean:
        assert lean
        ours = step_logits(stock_kernels_engine.model, ids)
    theirs = step_logits(stock, ids, adapter_names=[n or "__base__" for n in names])
    assert_within_bf16_rounding(ours, theirs)  # per-row products against per-adapter sub-batches


def test_a_group_mixes_layouts_and_matches_each_persona_alone(tiny_engine, tiny_model_dir, tiny_adapters, tmp_path, monkeypatch):
    from core.engine.lora_fast import FastLora
    from core.synthetic import make_random_adapter

    qv = make_random_adapter(tiny_model_dir, tmp_path / "qv", seed=5, rank=2, targets=["q_proj", "v_proj"])
    requests = [(PROMPT, ref("a", tiny_adapters["a"])), (PROMPT[:6], ref("qv", qv)), (PROMPT, None), (PROMPT[2:], ref("b", tiny_adapters["b"]))]
    together = tiny_engine.generate_group(requests, greedy(10))
    assert tiny_engine.last_generation["lean_rows"] is True
    alone = [tiny_engine.generate(p, r, greedy(10)) for p, r in requests]
    assert together == alone and len(set(alone)) == 4
    # A layer the lean forward does not serve (none today) sends the group to peft's mixed batches.
    monkeypatch.setattr(FastLora, "covers", lambda self, name, layers: False)
    assert tiny_engine.generate_group(requests, greedy(10)) == alone
    assert tiny_engine.last_generation["lean_rows"] is False


def test_a_reload_reads_straight_into_the_slot_and_gives_the_same_tokens(tiny_engine_factory, tiny_adapters, monkeypatch):
    import core.engine.local as engine_module

    engine = tiny_engine_factory(max_resident=1)
    first = {n: engine.generate(PROMPT, ref(n, tiny_adapters[n]), greedy()) for n in ("a", "b")}
    checks = []
    real_check = engine_module.check_compatible
    monkeypatch.setattr(engine_module, "check_compatible", lambda *a: checks.append(1) or real_check(*a))
    for n in ("a", "b", "a"):  # each load evicts the other: reloads of files already checked
        assert engine.generate(PROMPT, ref(n, tiny_adapters[n]), greedy()) == first[n]
    assert checks == []  # no full check, no load_file: the header and one read


def test_a_changed_file_gets_the_full_check_again(tiny_engine_factory, tiny_adapters, tmp_path):
    engine = tiny_engine_factory(max_resident=1)
    folder = tmp_path / "p"
    shutil.copytree(tiny_adapters["a"], folder)
    engine.generate(PROMPT, ref("p", folder), greedy())
    engine.generate(PROMPT, ref("b", tiny_adapters["b"]), greedy())  # evicts p
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[key] = torch.zeros(4, 99)  # a shape the model cannot take
    save_file(tensors, str(weights))
    with pytest.raises(Exception, match="shape"):
        engine.ensure_adapter(ref("p", folder))
    assert engine.resident() == ["b"]


def test_weights_file_reads_what_load_file_reads_and_refuses_truncation(tiny_adapters, tmp_path):
    src = tiny_adapters["a"] / "adapter_model.safetensors"
    saved = load_file(str(src))
    mixed = {k: (v.bfloat16() if i % 2 else v) for i, (k, v) in enumerate(sorted(saved.items()))}
    path = tmp_path / "w.safetensors"
    save_file(mixed, str(path))
    wf = WeightsFile.read_header(path)
    targets = {k: torch.empty(v.shape) for k, v in mixed.items()}  # fp32 targets: bf16 ones convert
    wf.read_into(targets)
    assert all(torch.equal(targets[k], mixed[k].float()) for k in mixed)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(AdapterCorrupt, match="truncated"):
        WeightsFile.read_header(path)


def test_a_resident_adapter_costs_its_file_size_in_tensors(tiny_engine, tiny_adapters):
    tiny_engine.ensure_adapter(ref("a", tiny_adapters["a"]))
    tiny_engine.ensure_adapter(ref("b", tiny_adapters["b"]))
    weights = tiny_adapters["a"] / "adapter_model.safetensors"
    data_bytes = sum(t.numel() * t.element_size() for t in load_file(str(weights)).values())
    for slot, nbytes in tiny_engine.pool.resident_bytes().items():
        assert nbytes == data_bytes <= weights.stat().st_size, slot  # fp32 file, fp32 slot, nothing more


def test_decode_steps_run_on_the_decode_threads_and_the_setting_is_restored(tiny_engine):
    seen = []
    hook = tiny_engine.model.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    threads = tiny_engine.threads
    old = (threads.decode, threads.prefill, threads.small)
    threads.decode, threads.prefill, threads.small = 1, 2, 4
    try:
        tiny_engine.generate(PROMPT, None, greedy(4))
    finally:
        threads.decode, threads.prefill, threads.small = old
        hook.remove()
    assert seen[0] == 2 and set(seen[1:]) == {1}  # the 9-token prompt, then one token at a time
    assert torch.get_num_threads() == before


def test_decode_threads_apply_to_any_model_with_the_hook(tiny_model_dir):
    from core.loader import load_base
    from core.model_source import ModelSource

    model, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    threads = DecodeThreads(model, decode=1, prefill=torch.get_num_threads())
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    with torch.inference_mode(), threads.active():
        model(input_ids=torch.tensor([[1, 2]]))
    model(input_ids=torch.tensor([[1, 2]]))  # outside active(): left alone
    assert seen[0] == 1 and seen[1] == torch.get_num_threads()


def test_creating_and_refilling_slots_leaves_the_packed_base_weights_alone(tiny_engine_factory, tiny_model_dir, tiny_adapters):
    """peft's load_adapter calls state_dict(), which unpacks bitsandbytes' CPU-packed 4-bit
    weights, and the repacking is not bit for bit (docs/performance.md); the pool must not."""
    from core.loader import load_base
    from core.model_source import ModelSource

    fresh, _, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    ids = torch.tensor([PROMPT])
    engine = tiny_engine_factory(max_resident=2, dense_budget=0)  # bitsandbytes' kernels, as `fresh` runs
    engine.generate(PROMPT, None, greedy(2))  # packs the weights
    for n in ("a", "b", "c", "a"):  # creates two slots, then refills them
        engine.generate(PROMPT, ref(n, tiny_adapters[n]), greedy(2))
    engine.pool.activate(None)
    with torch.inference_mode():
        assert torch.equal(engine.model(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_the_head_gets_a_densely_laid_out_input_with_the_same_logits():
    from core.engine.model_hooks import _dense_head_input

    head = torch.nn.Linear(64, 300, bias=False).bfloat16()
    hidden = torch.randn(2, 9, 64).bfloat16()
    last = hidden[:, -1:, :]  # what transformers passes for the last position's logits
    (dense,) = _dense_head_input(head, (last,))
    assert dense.stride() == (64, 64, 1) and torch.equal(dense, last)
    assert_within_bf16_rounding(head(dense), head(last))  # another layout may take another kernel
    assert _dense_head_input(head, (dense,)) is None  # already dense: left alone


@pytest.mark.parametrize("rows", [1, 2])
def test_a_group_of_one_or_two_matches_the_persona_alone(tiny_engine, tiny_adapters, rows):
    requests = [(PROMPT, ref("a", tiny_adapters["a"])), (PROMPT[3:], ref("b", tiny_adapters["b"]))][:rows]
    together = tiny_engine.generate_group(requests, greedy(8))
    assert tiny_engine.last_generation["lean_rows"] is True
    assert together == [tiny_engine.generate(p, r, greedy(8)) for p, r in requests]
