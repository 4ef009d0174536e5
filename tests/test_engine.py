"""The engine on a tiny NF4 model: adapters load, swap, evict, refuse, and never mix."""

import json
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.engine import AdapterRef, GenerationSettings
from core.errors import AdapterCorrupt, AdapterIncompatible

PROMPT = [1, 504, 3821, 28, 634, 359, 346, 47, 2]


def greedy(n=12, seed=7):
    return GenerationSettings(temperature=0, max_new_tokens=n, seed=seed)


def sampled(seed, n=16):
    return GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=n, seed=seed)


def ref(name, folder):
    return AdapterRef(name, folder)


def test_engine_reports_quantization_device_and_footprint(tiny_engine):
    from core.device import model_device, pick_device

    status = tiny_engine.status()
    assert status["quantization"].startswith("NF4")
    assert status["device"] == pick_device() == model_device(tiny_engine.model).type
    assert 0 < status["footprint_mb"] < 50
    assert status["resident_adapters"] == []
    layer = tiny_engine.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"


def test_adapters_change_the_voice_and_swap_back_exactly(tiny_engine, tiny_adapters):
    base = tiny_engine.generate(PROMPT, None, greedy())
    a1 = tiny_engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())
    b = tiny_engine.generate(PROMPT, ref("b", tiny_adapters["b"]), greedy())
    base2 = tiny_engine.generate(PROMPT, None, greedy())
    a2 = tiny_engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())
    assert len({base, a1, b}) == 3
    assert a1 == a2 and base == base2
    assert tiny_engine.resident() == ["b", "a"]  # least recently used first


def test_same_seed_same_reply_when_sampling(tiny_engine, tiny_adapters):
    r = ref("a", tiny_adapters["a"])
    one = tiny_engine.generate(PROMPT, r, sampled(11))
    two = tiny_engine.generate(PROMPT, r, sampled(11))
    other = tiny_engine.generate(PROMPT, r, sampled(12))
    assert one == two and one != other


def test_lru_evicts_and_reuses_slots(tiny_engine_factory, tiny_adapters):
    engine = tiny_engine_factory(max_resident=2)
    first = engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())
    engine.generate(PROMPT, ref("b", tiny_adapters["b"]), greedy())
    engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())  # a is now most recent
    engine.generate(PROMPT, ref("c", tiny_adapters["c"]), greedy())
    assert engine.resident() == ["a", "c"]
    assert engine.pool.slot_count() == 2  # b's slot was refilled with c, not kept beside it
    engine.generate(PROMPT, ref("b", tiny_adapters["b"]), greedy())
    assert engine.resident() == ["c", "b"]
    assert engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy()) == first


def _variant(src, dest, *, config=None, meta=None, tensors=None, drop=()):
    shutil.copytree(src, dest)
    for name in drop:
        (dest / name).unlink()
    if config:
        cfg = json.loads((dest / "adapter_config.json").read_text())
        cfg.update(config)
        (dest / "adapter_config.json").write_text(json.dumps(cfg))
    if meta:
        m = json.loads((dest / "chorus_adapter.json").read_text())
        m.update(meta)
        (dest / "chorus_adapter.json").write_text(json.dumps(m))
    if tensors:
        t = load_file(str(dest / "adapter_model.safetensors"))
        tensors(t)
        save_file(t, str(dest / "adapter_model.safetensors"))
    return dest


def _first_key(t, part):
    return next(k for k in sorted(t) if part in k)


CASES = {
    "pickle": (dict(drop=["adapter_model.safetensors"]), "pickle"),
    "wrong base fingerprint": (dict(meta={"base_fingerprint": "0000000000000000", "base_model": "Other-7B"}), "different base model"),
    "wrong base name": (dict(config={"base_model_name_or_path": "meta-llama/Llama-3-8B"}, meta={"base_model": "Llama-3-8B"}), "Llama-3-8B"),
    "wrong vocab": (dict(meta={"vocab_size": 32000}), "vocab_size 32000"),
    "wrong architecture": (dict(meta={"architecture": "MistralForCausalLM"}), "architecture MistralForCausalLM"),
    "absurd rank": (dict(config={"r": 100000}), "out of range"),
    "missing r": (dict(config={"r": None}), "not a number"),
    "unknown target": (dict(config={"target_modules": ["q_proj", "w_pack"]}), "w_pack"),
    "not lora": (dict(config={"peft_type": "IA3"}), "LoRA adapters only"),
    "wrong shapes": (
        dict(tensors=lambda t: t.__setitem__(_first_key(t, "lora_A"), torch.zeros(4, 99))),
        "shape",
    ),
    "missing matrices": (dict(tensors=lambda t: t.pop(_first_key(t, "lora_B"))), "lacks 1"),
    "foreign tensor": (
        dict(tensors=lambda t: t.__setitem__("base_model.model.lm_head.weight", torch.zeros(32000, 64))),
        "vocabulary size 32000",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_incompatible_adapters_are_refused_and_nothing_loads(case, tiny_engine, tiny_adapters, tmp_path):
    kwargs, message = CASES[case]
    if case == "pickle":
        kwargs = dict(kwargs)
    bad = _variant(tiny_adapters["b"], tmp_path / "bad", **kwargs)
    if case == "pickle":
        (bad / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    before = tiny_engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())
    with pytest.raises(AdapterIncompatible, match=message):
        tiny_engine.ensure_adapter(ref("bad", bad))
    assert tiny_engine.resident() == ["a"]
    assert tiny_engine.pool.slot_count() == 1  # only a's slot: nothing of the refused adapter stayed
    assert tiny_engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy()) == before


def test_checksum_mismatch_is_corruption(tiny_engine, tiny_adapters, tmp_path):
    bad = _variant(tiny_adapters["a"], tmp_path / "flip")
    data = bytearray((bad / "adapter_model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(AdapterCorrupt, match="checksum"):
        tiny_engine.ensure_adapter(AdapterRef("a", bad, sha256="0" * 64))
    trunc = _variant(tiny_adapters["a"], tmp_path / "trunc")
    raw = (trunc / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AdapterCorrupt, match="truncated"):
        tiny_engine.ensure_adapter(AdapterRef("t", trunc))
    assert tiny_engine.resident() == []


def test_concurrent_requests_for_different_personas_never_mix(tiny_engine, tiny_adapters):
    jobs = [(name, seed) for seed in (1, 2) for name in ("a", "b", "c", None)]

    def adapter(name):
        return ref(name, tiny_adapters[name]) if name else None

    alone = {(n, s): tiny_engine.generate(PROMPT, adapter(n), sampled(s)) for n, s in jobs}
    results = {}

    def run(job):
        results[job] = tiny_engine.generate(PROMPT, adapter(job[0]), sampled(job[1]))

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs * 1]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    assert len(set(alone.values())) == len(alone)


def test_stop_ends_a_reply_and_keeps_what_was_written(tiny_engine, tiny_adapters):
    settings = lambda: sampled(5, n=600)  # noqa: E731
    full = tiny_engine.generate(PROMPT, None, settings())
    assert tiny_engine.last_generation["tokens"] == 600
    stop = threading.Event()
    pieces = []
    for piece in tiny_engine.stream(PROMPT, None, settings(), stop):
        pieces.append(piece)
        stop.set()
    partial = "".join(pieces)
    assert partial and full.startswith(partial) and len(partial) < len(full)
    assert tiny_engine.last_generation["stopped"] is True
    assert tiny_engine.last_generation["tokens"] < 600


def test_replacing_an_adapter_while_it_answers_is_safe(tiny_engine, tiny_adapters):
    old = ref("p", tiny_adapters["a"])
    new = ref("p", tiny_adapters["b"])
    solo_old = tiny_engine.generate(PROMPT, old, greedy(n=30))
    solo_new = tiny_engine.generate(PROMPT, new, greedy(n=30))
    tiny_engine.ensure_adapter(old)
    started = threading.Event()
    pieces = []

    def chat():
        for piece in tiny_engine.stream(PROMPT, old, greedy(n=30)):
            pieces.append(piece)
            started.set()

    t = threading.Thread(target=chat)
    t.start()
    started.wait(10)
    tiny_engine.ensure_adapter(new)  # waits for the reply in flight, then swaps
    t.join()
    assert "".join(pieces) == solo_old
    assert tiny_engine.resident() == ["p"]
    assert tiny_engine.generate(PROMPT, new, greedy(n=30)) == solo_new


def test_fast_switching_gives_the_same_tokens_as_stock_peft(stock_kernels_engine, tiny_model_dir, tiny_adapters):
    from peft import PeftModel

    from core.loader import load_base
    from core.model_source import ModelSource

    ours = {n: stock_kernels_engine.generate(PROMPT, ref(n, tiny_adapters[n]) if n else None, greedy(n=20)) for n in ("a", "b", None, "a")}
    model, tok, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    stock = PeftModel.from_pretrained(model, str(tiny_adapters["a"]), adapter_name="a")
    stock.load_adapter(str(tiny_adapters["b"]), adapter_name="b")
    ids = torch.tensor([PROMPT])

    def run():
        out = stock.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False, repetition_penalty=1.1, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, len(PROMPT):], skip_special_tokens=True)

    theirs = {}
    for name in ("a", "b"):
        stock.set_adapter(name)
        theirs[name] = run()
    with stock.disable_adapter():
        theirs[None] = run()
    assert ours == theirs


def test_refilled_slots_give_the_same_tokens_as_fresh_ones(tiny_engine_factory, tiny_adapters):
    fresh = {}
    for name in ("a", "b", "c"):
        engine = tiny_engine_factory(max_resident=1)
        fresh[name] = engine.generate(PROMPT, ref(name, tiny_adapters[name]), sampled(9))
    engine = tiny_engine_factory(max_resident=1)
    for name in ("a", "b", "c", "a", "c", "b"):
        assert engine.generate(PROMPT, ref(name, tiny_adapters[name]), sampled(9)) == fresh[name]
        assert engine.pool.slot_count() == 1


def test_a_slot_with_another_layout_is_rebuilt(tiny_engine_factory, tiny_model_dir, tiny_adapters, tmp_path):
    from core.synthetic import make_random_adapter

    qv = make_random_adapter(tiny_model_dir, tmp_path / "qv", seed=5, rank=2, targets=["q_proj", "v_proj"])
    alone = tiny_engine_factory(max_resident=1).generate(PROMPT, ref("qv", qv), greedy())
    engine = tiny_engine_factory(max_resident=1)
    a = engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy())
    assert engine.generate(PROMPT, ref("qv", qv), greedy()) == alone
    assert engine.generate(PROMPT, ref("a", tiny_adapters["a"]), greedy()) == a
    assert engine.pool.slot_count() == 1


def test_alpha_is_rederived_when_a_slot_is_refilled(tiny_engine_factory, tiny_model_dir, tmp_path):
    from core.synthetic import make_random_adapter

    low = make_random_adapter(tiny_model_dir, tmp_path / "low", seed=6, rank=4, alpha=4)
    high = make_random_adapter(tiny_model_dir, tmp_path / "high", seed=6, rank=4, alpha=64)
    alone = tiny_engine_factory(max_resident=1).generate(PROMPT, ref("high", high), greedy())
    engine = tiny_engine_factory(max_resident=1)
    engine.generate(PROMPT, ref("low", low), greedy())
    assert engine.generate(PROMPT, ref("high", high), greedy()) == alone


def test_group_decoding_matches_peft_mixed_batches(tiny_engine, tiny_model_dir, tiny_adapters):
    from peft import PeftModel

    from tests.test_batching import run_request, same_reply

    from core.loader import load_base
    from core.model_source import ModelSource

    prompts = [PROMPT, PROMPT[:5], PROMPT[2:], PROMPT]
    names = ["a", "b", None, "c"]
    requests = [(p, ref(n, tiny_adapters[n]) if n else None) for p, n in zip(prompts, names)]
    ours = tiny_engine.generate_group(requests, greedy(n=10))
    assert tiny_engine.last_generation["lean_rows"] is True  # the lean per-row path, not peft's
    assert len(set(ours)) >= 3
    model, tok, _ = load_base(ModelSource("tiny-llama", tiny_model_dir))
    stock = PeftModel.from_pretrained(model, str(tiny_adapters["a"]), adapter_name="a")
    for n in ("b", "c"):
        stock.load_adapter(str(tiny_adapters[n]), adapter_name=n)
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = stock.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, repetition_penalty=1.1,
                         pad_token_id=tok.pad_token_id, adapter_names=[n or "__base__" for n in names])
    theirs = [tok.decode(row[width:], skip_special_tokens=True) for row in out]
    # Other kernels (peft's batch, each row alone) agree up to a near-tie of the random
    # model's flat logits (tests/rounding.py), all the way where there is none.
    alone = [run_request(tiny_engine, p, r, greedy(n=10), trace=True) for p, r in requests]
    assert all(same_reply(tiny_engine, text, solo) for text, solo in zip(ours, alone)), (ours, [r.text for r in alone])
    assert all(same_reply(tiny_engine, text, solo) for text, solo in zip(theirs, alone)), (theirs, [r.text for r in alone])
    with pytest.raises(Exception, match="greedy"):
        tiny_engine.generate_group(requests, sampled(1))
