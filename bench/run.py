"""Benchmark on the embedded model: Chorus's serving paths beside stock peft, in one process.

    python bench/run.py --json

Prints one JSON object (docs/performance.md says what each key means). Both paths run on
their own NF4 copy of the same model, loaded by core.loader (so both decode with the
attention of core/attention.py), with the same rank-16 adapters on all linear layers, the
same prompt, greedy decoding and the same CPU-thread policy; decode and group figures are
taken in interleaved rounds (Chorus, peft, Chorus, peft...), the ratios within each round,
and reported as medians, so that the ratios of one run compare like with like on a noisy
machine. `*_peft` keys are stock peft (`load_adapter`, `set_adapter`, `disable_adapter`,
`adapter_names` mixed batches); `tokens_match_peft` says whether the Chorus path produced
exactly the stock path's tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import attention  # noqa: E402
from core.engine import AdapterRef, DecodeThreads, Engine, GenerationSettings  # noqa: E402
from core.model_source import resolve_model  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.synthetic import ALL_LINEAR, make_random_adapter  # noqa: E402
from storage.paths import chorus_home  # noqa: E402


def pct(values, q):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def med(values):
    return statistics.median(values)


def rss_bytes(trim: bool = False) -> int:
    """Resident memory; with trim, after handing freed heap back to the OS first, so that
    memory freed earlier (and reused by what is measured) does not hide growth."""
    import psutil

    if trim:
        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    return psutil.Process().memory_info().rss


def switch_ms(engine, ref) -> float:
    """Milliseconds from naming a persona's adapter to it being the one the model runs."""
    t0 = time.perf_counter()
    name = engine.ensure_adapter(ref)
    with engine._lock:
        engine._activate(name)
    return (time.perf_counter() - t0) * 1000


def clone_adapter(src: Path, dest: Path, seed: int) -> Path:
    """A copy of `src` with perturbed weights: a distinct persona without rebuilding the model."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v * (1 + 0.5 * torch.rand(v.shape, generator=g)) for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    return dest


class Stock:
    """Stock peft on its own NF4 copy: the path Chorus is compared with."""

    def __init__(self, source, adapters, threads):
        from peft import PeftModel

        from core.loader import load_base

        self.model, self.tok, _ = load_base(source)
        self.threads = DecodeThreads(self.model, threads.decode, threads.prefill)
        self.peft = PeftModel.from_pretrained(self.model, str(adapters[0]), adapter_name="p0")
        for i, a in enumerate(adapters[1:4], start=1):
            self.peft.load_adapter(str(a), adapter_name=f"p{i}")
        self.peft.eval()

    def generate(self, batch, mask, tokens, **extra):
        import torch

        with torch.inference_mode(), self.threads.active():
            return self.peft.generate(input_ids=batch, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                      do_sample=False, pad_token_id=self.tok.pad_token_id, **extra)

    def decode(self, ids, adapter, tokens):
        """(tokens/s, text) of one greedy reply; adapter None: the bare base."""
        import contextlib

        import torch

        x = torch.tensor([ids])
        if adapter is not None:
            self.peft.set_adapter(adapter)
        ctx = self.peft.disable_adapter() if adapter is None else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            out = self.generate(x, torch.ones_like(x), tokens)
        rate = (out.shape[1] - x.shape[1]) / (time.perf_counter() - t0)
        return rate, self.tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def step_ms(model, ids, threads, steps=16) -> float:
    """Median milliseconds of one-token forward steps through the KV cache, without
    generate()'s own per-token work (logits processors, streamer): the model alone."""
    import torch

    x = torch.tensor(ids if isinstance(ids[0], list) else [ids])
    times = []
    with torch.inference_mode(), threads.active():
        out = model(input_ids=x, use_cache=True)
        for _ in range(steps):
            nxt = out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            times.append((time.perf_counter() - t0) * 1000)
    return med(times)


def chorus_steps(engine, ids, ref) -> float:
    with engine._lock:
        engine._activate(engine.ensure_adapter(ref) if ref is not None else None)
        try:
            return step_ms(engine.model, ids, engine.threads)
        finally:
            engine.pool.fast.forget_input()


def chorus_group_steps(engine, ids, refs) -> float:
    """step_ms for one batch whose rows are the personas `refs` (the group's decode steps)."""
    with engine._lock:
        names = [engine.ensure_adapter(r) for r in refs]
        active = engine.pool.active
        engine.pool.activate(None)
        try:
            with engine.pool.rows(names):
                return step_ms(engine.model, [ids] * len(refs), engine.threads)
        finally:
            engine.pool.fast.forget_input()
            engine.pool.activate(active)


def stock_steps(stock, ids, adapter) -> float:
    import contextlib

    if adapter is not None:
        stock.peft.set_adapter(adapter)
    with stock.peft.disable_adapter() if adapter is None else contextlib.nullcontext():
        return step_ms(stock.peft, ids, stock.threads)


def chorus_decode(engine, ids, ref, tokens):
    s = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)
    text = engine.generate(ids, ref, s)
    return engine.last_generation["tokens"] / engine.last_generation["seconds"], text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--model", default=None, help="model id or folder (default: embedded)")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--cold-loads", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--group-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds for decode and group figures")
    parser.add_argument("--decode-rounds", type=int, default=5, help="rounds of the decode figures (base, then adapter)")
    parser.add_argument("--group-rounds", type=int, default=5, help="rounds of the group figure (one after another, then together)")
    parser.add_argument("--drift-switches", type=int, default=1000)
    parser.add_argument("--skip-peft", action="store_true", help="leave out the stock peft comparison")
    args = parser.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    quiet_libraries()
    import torch

    source = resolve_model(args.model, chorus_home(), progress=lambda m: log(m))
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    log("making rank-16 adapters on all linear layers...")
    adapters = [
        make_random_adapter(source.path, work / f"p{i}", seed=i, rank=16, alpha=32, targets=ALL_LINEAR, scale=0.3, base_name=source.name)
        for i in range(4)
    ]
    adapters += [clone_adapter(adapters[i % 4], work / f"p{i}", seed=i) for i in range(4, 20)]
    file_bytes = (adapters[0] / "adapter_model.safetensors").stat().st_size

    log("loading bf16 for the footprint comparison...")
    bf16 = Engine.load(source, quantize=False)
    footprint_bf16 = bf16.info.footprint_mb
    del bf16

    log("loading NF4 (timed: what a switch by reloading would cost)...")
    t0 = time.perf_counter()
    engine = Engine.load(source, max_resident=8)
    full_reload_s = time.perf_counter() - t0
    refs = [AdapterRef(f"p{i}", a) for i, a in enumerate(adapters)]
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}], add_generation_prompt=True, tokenize=True
    )
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    engine.generate(ids, None, GenerationSettings(temperature=0, max_new_tokens=4, seed=0))  # warm-up (packs 4-bit weights)

    log("memory of resident adapters...")
    engine.ensure_adapter(refs[0])  # the first one also wraps 210 modules in peft layers, once
    rss1 = rss_bytes(trim=True)
    for r in refs[1:8]:
        engine.ensure_adapter(r)
    rss8 = rss_bytes(trim=True)
    tensor_bytes = engine.pool.resident_bytes()

    log("cold loads (first sight of a file, then reloads of evicted ones)...")
    first, cold = [], []
    for r in refs[8:12]:  # never loaded: sha256 and the full check run
        engine.forget(engine.resident()[0])
        first.append(switch_ms(engine, r))
    for i in range(args.cold_loads):
        r = refs[8 + i % 2]
        engine.forget(r.persona_id)
        cold.append(switch_ms(engine, r))

    log("resident switches...")
    for r in refs[:4]:
        engine.ensure_adapter(r)
    switch = [switch_ms(engine, refs[i % 4]) for i in range(args.switches)]

    stock = None
    if not args.skip_peft:
        log("stock peft: loading its own NF4 copy...")
        stock = Stock(source, adapters, engine.threads)
        stock.decode(ids, "p0", 4)  # warm-up
        log("stock peft: resident switches...")
        peft_switch = []
        for i in range(args.switches):
            t0 = time.perf_counter()
            stock.peft.set_adapter(f"p{i % 4}")
            peft_switch.append((time.perf_counter() - t0) * 1000)

    log("decode, interleaved rounds...")
    rates = {}
    texts = {}
    for _ in range(args.decode_rounds):
        for key, run in (
            ("base", lambda: chorus_decode(engine, ids, None, args.decode_tokens)),
            ("adapter", lambda: chorus_decode(engine, ids, refs[0], args.decode_tokens)),
            ("base_peft", lambda: stock.decode(ids, None, args.decode_tokens)),
            ("adapter_peft", lambda: stock.decode(ids, "p0", args.decode_tokens)),
        ):
            if key.endswith("_peft") and stock is None:
                continue
            rate, texts[key] = run()
            rates.setdefault(key, []).append(rate)
    rate = {k: med(v) for k, v in rates.items()}
    # Ratios within each round (base and adapter back to back), then their median: a slow
    # spell of this shared machine lands on both sides of one ratio.
    decode_ratios = {
        side: [a / b for a, b in zip(rates[f"adapter{side}"], rates[f"base{side}"])]
        for side in ("", "_peft") if f"base{side}" in rates
    }
    steps = {}
    for _ in range(args.repeats):
        for key, run in (
            ("base", lambda: chorus_steps(engine, ids, None)),
            ("adapter", lambda: chorus_steps(engine, ids, refs[0])),
            ("group", lambda: chorus_group_steps(engine, ids, refs[:4])),
            ("base_peft", lambda: stock_steps(stock, ids, None)),
            ("adapter_peft", lambda: stock_steps(stock, ids, "p0")),
        ):
            if key.endswith("_peft") and stock is None:
                continue
            steps.setdefault(key, []).append(run())
    step = {k: med(v) for k, v in steps.items()}

    log("group of 4 personas, interleaved rounds...")
    fixed = GenerationSettings(temperature=0, max_new_tokens=args.group_tokens, min_new_tokens=args.group_tokens, seed=0, repetition_penalty=1.0)
    group = [(ids, refs[i]) for i in range(4)]
    seconds = {}
    batch = torch.tensor([ids] * 4)
    for r in refs[:4]:
        engine.ensure_adapter(r)
    group_ratios = []  # within each round, as for the decode ratio
    for round_ in range(args.group_rounds):
        t0 = time.perf_counter()
        alone = [engine.generate(i, r, fixed) for i, r in group]
        seconds.setdefault("sequential", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        together = engine.generate_group(group, fixed)
        seconds.setdefault("group", []).append(time.perf_counter() - t0)
        group_ratios.append(seconds["sequential"][-1] / seconds["group"][-1])
        lean_rows = engine.last_generation.get("lean_rows")
        if stock is not None and round_ < max(1, args.repeats - 1):
            t0 = time.perf_counter()
            for i in range(4):
                stock.decode(ids, f"p{i}", args.group_tokens)
            seconds.setdefault("sequential_peft", []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = stock.generate(batch, torch.ones_like(batch), args.group_tokens, adapter_names=[f"p{i}" for i in range(4)])
            seconds.setdefault("group_peft", []).append(time.perf_counter() - t0)
            together_peft = [stock.tok.decode(row[len(ids):], skip_special_tokens=True) for row in out]
    sec = {k: med(v) for k, v in seconds.items()}

    if stock is not None:
        # Last, because it changes the stock model: peft's load_adapter calls state_dict(),
        # which makes bitsandbytes unpack the CPU-packed 4-bit weights; the next forward
        # packs them again, not bit for bit (see docs/performance.md).
        log("stock peft: cold loads...")
        peft_cold = []
        for i in range(args.cold_loads):
            t0 = time.perf_counter()
            stock.peft.load_adapter(str(adapters[8 + i % 2]), adapter_name="cold")
            stock.peft.set_adapter("cold")
            peft_cold.append((time.perf_counter() - t0) * 1000)
            stock.peft.set_adapter("p0")
            stock.peft.delete_adapter("cold")
        base_after_cold = stock.decode(ids, None, args.decode_tokens)[1]

    log(f"{args.drift_switches} random switches among 20 personas, 8 resident...")
    rng = random.Random(0)
    for r in refs[:8]:
        engine.ensure_adapter(r)
    for _ in range(50):  # every file seen once, allocator settled
        switch_ms(engine, rng.choice(refs))
    drift_start = rss_bytes()
    drift = [switch_ms(engine, rng.choice(refs)) for _ in range(args.drift_switches)]
    drift_end = rss_bytes()

    long_ids = (engine.tokenizer("The lighthouse keeper wrote in his log. " * 80)["input_ids"])[:512]
    ttft = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stream = engine.stream(long_ids, None, GenerationSettings(temperature=0, max_new_tokens=4, min_new_tokens=4, seed=0))
        next(stream)
        ttft.append((time.perf_counter() - t0) * 1000)
        for _ in stream:
            pass

    # The decode attention (core/attention.py) against transformers' sdpa on the same model:
    # one-token steps after the short prompt and after 512 tokens of context, interleaved.
    attn_steps = {}
    compare_attention = engine.model.config._attn_implementation == attention.NAME  # not on CUDA
    if compare_attention:
        log("decode attention against transformers' sdpa...")
    for _ in range(args.repeats if compare_attention else 0):
        for impl in (attention.NAME, "sdpa"):
            engine.model.set_attn_implementation(impl)
            try:
                for ctx, prompt_ids in (("", ids), ("_512", long_ids)):
                    attn_steps.setdefault(f"{ctx}_{impl}", []).append(chorus_steps(engine, prompt_ids, None))
            finally:
                engine.model.set_attn_implementation(attention.NAME)
    attn = {k: med(v) for k, v in attn_steps.items()}

    per_adapter = (rss8 - rss1) / 7
    result = {
        "model": source.name,
        "device": engine.info.device,
        "threads": {"decode": engine.threads.decode, "prefill": engine.threads.prefill, "cores": os.cpu_count()},
        "adapter_rank": 16,
        "adapter_file_bytes": file_bytes,
        "adapter_file_mb": round(file_bytes / 1e6, 1),
        "switch_resident_ms_p50": round(pct(switch, 50), 3),
        "switch_resident_ms_p99": round(pct(switch, 99), 3),
        "adapter_cold_load_ms_p50": round(pct(cold, 50), 1),
        "adapter_cold_load_ms_p99": round(pct(cold, 99), 1),
        "adapter_first_load_ms_p50": round(pct(first, 50), 1),
        "full_reload_s": round(full_reload_s, 2),
        "footprint_nf4_mb": engine.info.footprint_mb,
        "footprint_bf16_mb": footprint_bf16,
        "decode_tok_s_base": round(rate["base"], 1),
        "decode_tok_s_adapter": round(rate["adapter"], 1),
        "decode_ratio": round(med(decode_ratios[""]), 3),
        "decode_ratio_rounds": [round(x, 3) for x in decode_ratios[""]],
        "step_ms_base": round(step["base"], 2),
        "step_ms_adapter": round(step["adapter"], 2),
        "decode_ratio_forward": round(step["base"] / step["adapter"], 3),
        "ttft_ms_512": round(med(ttft), 1),
        "attention": engine.model.config._attn_implementation,
        "group4_tok_s": round(4 * args.group_tokens / sec["group"], 1),
        "group4_speedup": round(med(group_ratios), 2),
        "group4_speedup_rounds": [round(x, 2) for x in group_ratios],
        "step_ms_group4": round(step["group"], 2),
        "group4_speedup_forward": round(4 * step["adapter"] / step["group"], 2),
        "group4_lean_rows": bool(lean_rows),
        "group4_tokens_match_alone": together == alone,
        "resident_bytes_per_adapter": round(per_adapter),
        "resident_tensor_bytes_per_adapter": round(statistics.mean(tensor_bytes.values())),
        "adapter_resident_over_file": round(per_adapter / file_bytes, 3),
        "rss_mb_drift_start": round(drift_start / 1e6, 1),
        "rss_drift_pct_1000_switches": round(100 * (drift_end - drift_start) / drift_start, 2),
        "drift_switch_ms_p50": round(pct(drift, 50), 3),
        "slots": engine.pool.slot_count(),
    }
    if compare_attention:
        result.update({
            "step_ms_base_chorus_attention": round(attn[f"_{attention.NAME}"], 2),
            "step_ms_base_sdpa": round(attn["_sdpa"], 2),
            "step_ms_base_512": round(attn[f"_512_{attention.NAME}"], 2),
            "step_ms_base_512_sdpa": round(attn["_512_sdpa"], 2),
        })
    if stock is not None:
        result.update({
            "switch_resident_ms_p50_peft": round(pct(peft_switch, 50), 3),
            "switch_resident_ms_p99_peft": round(pct(peft_switch, 99), 3),
            "adapter_cold_load_ms_p50_peft": round(pct(peft_cold, 50), 1),
            "decode_tok_s_base_peft": round(rate["base_peft"], 1),
            "decode_tok_s_adapter_peft": round(rate["adapter_peft"], 1),
            "decode_ratio_peft": round(med(decode_ratios["_peft"]), 3),
            "step_ms_base_peft": round(step["base_peft"], 2),
            "step_ms_adapter_peft": round(step["adapter_peft"], 2),
            "decode_ratio_forward_peft": round(step["base_peft"] / step["adapter_peft"], 3),
            "group4_tok_s_peft": round(4 * args.group_tokens / sec["group_peft"], 1),
            "group4_speedup_peft": round(sec["sequential_peft"] / sec["group_peft"], 2),
            "switch_speedup_vs_peft": round(pct(peft_switch, 50) / pct(switch, 50), 1),
            "cold_load_speedup_vs_peft": round(pct(peft_cold, 50) / pct(cold, 50), 1),
            "decode_adapter_speedup_vs_peft": round(rate["adapter"] / rate["adapter_peft"], 2),
            "group4_speedup_vs_peft_group": round(sec["group_peft"] / sec["group"], 2),
            "tokens_match_peft": {"base": texts["base"] == texts["base_peft"], "adapter": texts["adapter"] == texts["adapter_peft"]},
            "group4_tokens_match_peft": together == together_peft,
            "peft_cold_loads_changed_base_tokens": base_after_cold != texts["base_peft"],
        })
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
