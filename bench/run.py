"""Benchmark on the embedded model: Chorus's serving paths beside stock peft, in one process.

    python bench/run.py --json

Prints one JSON object (docs/performance.md says what each key means; its `notes` say what
the labelled variants are). Three NF4 copies of the same model, each loaded by core.loader
(so all decode with the attention of core/engine/attention.py) and each with the engine's model
hooks (CPU-thread policy, dense head input, the 4-bit layers' CPU forwards): the Chorus engine; stock peft with the same
rank-16 adapters on all linear layers; and a bare base with no LoRA wrappers at all.
`*_peft` keys are stock peft with those hooks (like for like); `*_peft_nohook` keys are
stock peft without the head hook, as it ships. Same prompt, greedy decoding. Decode and
group figures are taken in interleaved rounds (Chorus, peft, Chorus, peft...); every ratio
is the median of the ratios taken within each round, so that a slow spell of a noisy
machine lands on both sides of one ratio. `tokens_match_peft` says whether the Chorus path
produced exactly the stock path's tokens. Progress goes to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import cached_fraction, drop_from_page_cache, med, mem_bytes, pct, step_ms  # noqa: E402
from bench.models import Bare, Stock  # noqa: E402
from core.engine import attention  # noqa: E402
from core.engine import AdapterRef, Engine, GenerationSettings  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.model_source import resolve_model  # noqa: E402
from core.synthetic import make_random_adapter  # noqa: E402
from storage.paths import chorus_home  # noqa: E402

WEIGHTS = "adapter_model.safetensors"

NOTES = {
    "ratios": "every ratio is the median of ratios taken within interleaved rounds (`*_rounds` lists them)",
    "peft": "`*_peft`: stock peft on its own NF4 copy with the same model hooks as Chorus (CPU-thread policy, "
            "dense lm_head input, the 4-bit layers' CPU forwards); `*_peft_nohook`: the same without the head-input hook, as stock peft ships",
    "base": "`base`: Chorus's model with its LoRA wrappers installed and no adapter active; `base_unwrapped`: "
            "a separate NF4 copy with no LoRA wrappers at all (same loader and hooks)",
    "cold_load": "`_page_cache`: the evicted adapter read back while its files are in the page cache; `_disk`: "
                 "after fsync and posix_fadvise(POSIX_FADV_DONTNEED) on its files, so the read goes to the disk "
                 "(`adapter_cold_load_disk_cached_fraction` is the largest share of the weights still cached "
                 "just before such a read: 0 means every disk figure is a disk read)",
    "group4": "the app decodes this way: every request waiting for the model (a group chat answering "
              "everyone at once, API clients, tabs) joins one batch in the scheduler (core/engine/scheduler.py); "
              "generate_group submits the whole group at once",
}


def switch_ms(engine, ref) -> float:
    """Milliseconds from naming a persona's adapter to it being the one the model runs."""
    t0 = time.perf_counter()
    name = engine.ensure_adapter(ref)
    with engine._lock:
        engine._activate(name)
    return (time.perf_counter() - t0) * 1000


def clone_adapter(src: Path, dest: Path, seed: int) -> Path:
    """A copy of `src` with perturbed weights: a distinct persona without rebuilding the model."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v * (1 + 0.5 * torch.rand(v.shape, generator=g)) for k, v in load_file(str(src / WEIGHTS)).items()}
    save_file(tensors, str(dest / WEIGHTS))
    return dest


def chorus_steps(engine, ids, ref) -> float:
    with engine._lock:
        engine._activate(engine.ensure_adapter(ref) if ref is not None else None)
        try:
            return step_ms(engine.model, ids, engine.threads)
        finally:
            engine.pool.fast.forget_input()


def chorus_group_steps(engine, ids, refs) -> float:
    """step_ms for one batch whose rows are the personas `refs` (the group's decode steps):
    the lean per-row forwards where the engine has them (CPU), else peft's mixed batch, as
    generate_group does."""
    with engine._lock:
        names = [engine.ensure_adapter(r) for r in refs]
        active = engine.pool.active
        engine.pool.activate(None)
        try:
            with engine.pool.rows(names) as lean:
                if lean:
                    return step_ms(engine.model, [ids] * len(refs), engine.threads)
                return step_ms(engine.peft, [ids] * len(refs), engine.threads, adapter_names=names)
        finally:
            engine.pool.fast.forget_input()
            engine.pool.activate(active)


def stock_steps(stock, ids, adapter) -> float:
    with stock.use(adapter):
        return step_ms(stock.peft, ids, stock.threads)


def chorus_decode(engine, ids, ref, tokens):
    s = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)
    text = engine.generate(ids, ref, s)
    return engine.last_generation["tokens"] / engine.last_generation["seconds"], text


def hooked(side, on: bool, run):
    """`run()` with `side`'s head-input hook on or off."""
    with side.hooked(on):
        return run()


def within(values: dict, num: str, den: str) -> list[float]:
    """Per-round ratios num/den of two series taken in the same rounds."""
    return [a / b for a, b in zip(values[num], values[den])]


def rounded(ratios: list[float], digits: int = 3) -> tuple[float, list[float]]:
    return round(med(ratios), digits), [round(x, digits) for x in ratios]


def cold_loads(n: int, reload, folders) -> tuple[dict, list]:
    """n reloads from the page cache and n after dropping the files from it, interleaved.
    Returns ({"page_cache": ms, "disk": ms}, the cached share of the weights before each
    disk read)."""
    times, left = {"page_cache": [], "disk": []}, []
    for i in range(n):
        folder = folders[i % len(folders)]
        times["page_cache"].append(reload(i))
        drop_from_page_cache(folder)
        left.append(cached_fraction(folder / WEIGHTS))
        times["disk"].append(reload(i))
    return times, left


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument("--model", default=None, help="model id or folder (default: embedded)")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--cold-loads", type=int, default=10, help="reloads of each kind (page cache, disk)")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--group-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the forward-step, TTFT and attention figures")
    parser.add_argument("--decode-rounds", type=int, default=5, help="rounds of the decode figures")
    parser.add_argument("--group-rounds", type=int, default=5, help="rounds of the group figures")
    parser.add_argument("--drift-switches", type=int, default=1000)
    parser.add_argument("--skip-peft", action="store_true", help="leave out the stock peft comparison")
    parser.add_argument("--work-dir", default=None,
                        help="where the adapters are written (default: a temporary folder under CHORUS_HOME, on the "
                             "disk the app keeps adapters on; a tmpfs would make the disk figures page-cache reads)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    source = resolve_model(args.model, chorus_home(), progress=log)
    parent = Path(args.work_dir) if args.work_dir else chorus_home()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-", dir=parent))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
            result = measure(args, source, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def measure(args, source, work: Path, log) -> dict:
    log("making rank-16 adapters on all linear layers...")
    adapters = [
        make_random_adapter(source.path, work / f"p{i}", seed=i, rank=16, alpha=32, targets="all-linear", scale=0.3, base_name=source.name)
        for i in range(4)
    ]
    adapters += [clone_adapter(adapters[i % 4], work / f"p{i}", seed=i) for i in range(4, 20)]
    file_bytes = (adapters[0] / WEIGHTS).stat().st_size

    log("loading bf16 for the footprint comparison...")
    bf16 = Engine.load(source, quantize=False)
    footprint_bf16 = bf16.info.footprint_mb
    del bf16

    log("loading NF4 (timed: what a switch by reloading would cost)...")
    t0 = time.perf_counter()
    engine = Engine.load(source, max_resident=8)
    full_reload_s = time.perf_counter() - t0
    device = engine.info.device
    refs = [AdapterRef(f"p{i}", a) for i, a in enumerate(adapters)]
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}], add_generation_prompt=True, tokenize=True
    )
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    engine.generate(ids, None, GenerationSettings(temperature=0, max_new_tokens=4, seed=0))  # warm-up (packs 4-bit weights)

    log("memory of resident adapters...")
    engine.ensure_adapter(refs[0])  # the first one also wraps 210 modules in peft layers, once
    mem1 = mem_bytes(device, trim=True)
    for r in refs[1:8]:
        engine.ensure_adapter(r)
    mem8 = mem_bytes(device, trim=True)
    tensor_bytes = engine.pool.resident_bytes()

    log("cold loads (first sight of a file; then evicted ones back, from the page cache and from the disk)...")
    first = []
    for r in refs[8:12]:  # never loaded: sha256 and the full check run
        engine.forget(engine.resident()[0])
        first.append(switch_ms(engine, r))

    def chorus_reload(i):
        r = refs[8 + i % 2]
        engine.forget(r.persona_id)
        return switch_ms(engine, r)

    cold, cold_left = cold_loads(args.cold_loads, chorus_reload, adapters[8:10])

    log("resident switches...")
    for r in refs[:4]:
        engine.ensure_adapter(r)
    switch = [switch_ms(engine, refs[i % 4]) for i in range(args.switches)]

    log("the bare base without LoRA wrappers: its own NF4 copy...")
    attn = engine.model.config._attn_implementation
    dtype = engine.model.get_input_embeddings().weight.dtype  # core/engine/compute_dtype.py's choice
    bare = Bare(source, engine.threads, attn, dtype)
    bare.decode(ids, None, 4)  # warm-up
    stock = None
    if not args.skip_peft:
        log("stock peft: loading its own NF4 copy...")
        stock = Stock(source, adapters, engine.threads, attn, dtype)
        stock.decode(ids, "p0", 4)  # warm-up
        log("stock peft: resident switches...")
        peft_switch = []
        for i in range(args.switches):
            t0 = time.perf_counter()
            stock.peft.set_adapter(f"p{i % 4}")
            peft_switch.append((time.perf_counter() - t0) * 1000)

    log("decode, interleaved rounds...")
    tokens = args.decode_tokens
    runs = {
        "base": lambda: chorus_decode(engine, ids, None, tokens),
        "adapter": lambda: chorus_decode(engine, ids, refs[0], tokens),
        "base_unwrapped": lambda: bare.decode(ids, None, tokens),
    }
    if stock is not None:
        runs.update({
            "base_peft": lambda: hooked(stock, True, lambda: stock.decode(ids, None, tokens)),
            "adapter_peft": lambda: hooked(stock, True, lambda: stock.decode(ids, "p0", tokens)),
            "base_peft_nohook": lambda: hooked(stock, False, lambda: stock.decode(ids, None, tokens)),
            "adapter_peft_nohook": lambda: hooked(stock, False, lambda: stock.decode(ids, "p0", tokens)),
        })
    rates, texts = {}, {}
    for _ in range(args.decode_rounds):
        for key, run in runs.items():
            rate, texts[key] = run()
            rates.setdefault(key, []).append(rate)
    rate = {k: med(v) for k, v in rates.items()}

    log("one-token forward steps, interleaved rounds...")
    step_runs = {
        "base": lambda: chorus_steps(engine, ids, None),
        "adapter": lambda: chorus_steps(engine, ids, refs[0]),
        "group": lambda: chorus_group_steps(engine, ids, refs[:4]),
        "base_unwrapped": lambda: step_ms(bare.model, ids, bare.threads),
    }
    if stock is not None:
        step_runs.update({"base_peft": lambda: stock_steps(stock, ids, None), "adapter_peft": lambda: stock_steps(stock, ids, "p0")})
    steps = {}
    for _ in range(args.repeats):
        for key, run in step_runs.items():
            steps.setdefault(key, []).append(run())
    step = {k: med(v) for k, v in steps.items()}

    log("group of 4 personas, interleaved rounds...")
    fixed = GenerationSettings(temperature=0, max_new_tokens=args.group_tokens, min_new_tokens=args.group_tokens, seed=0, repetition_penalty=1.0)
    group = [(ids, refs[i]) for i in range(4)]
    names4 = [f"p{i}" for i in range(4)]
    seconds = {}
    for r in refs[:4]:
        engine.ensure_adapter(r)
    for _ in range(args.group_rounds):  # every round holds every side, so each ratio is within a round
        t0 = time.perf_counter()
        alone = [engine.generate(i, r, fixed) for i, r in group]
        seconds.setdefault("sequential", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        together = engine.generate_group(group, fixed)
        seconds.setdefault("group", []).append(time.perf_counter() - t0)
        lean_rows = engine.last_generation.get("lean_rows")
        if stock is None:
            continue
        with stock.hooked(True):
            t0 = time.perf_counter()
            for name in names4:
                stock.decode(ids, name, args.group_tokens)
            seconds.setdefault("sequential_peft", []).append(time.perf_counter() - t0)
            took, out = stock.timed([ids] * 4, args.group_tokens, adapter_names=names4)
            seconds.setdefault("group_peft", []).append(took)
        together_peft = [stock.tok.decode(row, skip_special_tokens=True) for row in out]
        with stock.hooked(False):
            seconds.setdefault("group_peft_nohook", []).append(stock.timed([ids] * 4, args.group_tokens, adapter_names=names4)[0])
    sec = {k: med(v) for k, v in seconds.items()}

    if stock is not None:
        # Last, because it changes the stock model: peft's load_adapter calls state_dict(),
        # which makes bitsandbytes unpack the CPU-packed 4-bit weights; the next forward
        # packs them again, not bit for bit (see docs/performance.md).
        log("stock peft: cold loads (page cache, then disk)...")

        def peft_reload(i):
            t0 = time.perf_counter()
            stock.peft.load_adapter(str(adapters[8 + i % 2]), adapter_name="cold")
            stock.peft.set_adapter("cold")
            took = (time.perf_counter() - t0) * 1000
            stock.peft.set_adapter("p0")
            stock.peft.delete_adapter("cold")
            return took

        peft_cold, peft_cold_left = cold_loads(args.cold_loads, peft_reload, adapters[8:10])
        base_after_cold = stock.decode(ids, None, args.decode_tokens)[1]

    log(f"{args.drift_switches} random switches among 20 personas, 8 resident...")
    rng = random.Random(0)
    for r in refs[:8]:
        engine.ensure_adapter(r)
    for _ in range(50):  # every file seen once, allocator settled
        switch_ms(engine, rng.choice(refs))
    drift_start = mem_bytes(device)
    drift = [switch_ms(engine, rng.choice(refs)) for _ in range(args.drift_switches)]
    drift_end = mem_bytes(device)

    long_ids = (engine.tokenizer("The lighthouse keeper wrote in his log. " * 80)["input_ids"])[:512]
    ttft = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stream = engine.stream(long_ids, None, GenerationSettings(temperature=0, max_new_tokens=4, min_new_tokens=4, seed=0))
        next(stream)
        ttft.append((time.perf_counter() - t0) * 1000)
        for _ in stream:
            pass

    # The decode attention (core/engine/attention.py) against transformers' sdpa on the same model:
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

    per_adapter = (mem8 - mem1) / 7
    decode_ratio, decode_ratio_rounds = rounded(within(rates, "adapter", "base"))
    vs_unwrapped, vs_unwrapped_rounds = rounded(within(rates, "adapter", "base_unwrapped"))
    group_ratio, group_rounds = rounded(within(seconds, "sequential", "group"), 2)
    result = {
        "model": source.name,
        "device": device,
        "threads": {"decode": engine.threads.decode, "prefill": engine.threads.prefill, "cores": os.cpu_count()},
        "notes": NOTES,
        "fast_paths": getattr(engine, "fast_paths", None),  # the engine's start-up self-check of its fast kernels
        "adapter_rank": 16,
        "adapter_file_bytes": file_bytes,
        "adapter_file_mb": round(file_bytes / 1e6, 1),
        "switch_resident_ms_p50": round(pct(switch, 50), 3),
        "switch_resident_ms_p99": round(pct(switch, 99), 3),
        "adapter_cold_load_ms_p50_page_cache": round(pct(cold["page_cache"], 50), 1),
        "adapter_cold_load_ms_p99_page_cache": round(pct(cold["page_cache"], 99), 1),
        "adapter_cold_load_ms_p50_disk": round(pct(cold["disk"], 50), 1),
        "adapter_cold_load_ms_p99_disk": round(pct(cold["disk"], 99), 1),
        "adapter_cold_load_disk_cached_fraction": max((x for x in cold_left if x is not None), default=None),
        "adapter_first_load_ms_p50": round(pct(first, 50), 1),
        "full_reload_s": round(full_reload_s, 2),
        "footprint_nf4_mb": engine.info.footprint_mb,
        "footprint_bf16_mb": footprint_bf16,
        "decode_tok_s_base": round(rate["base"], 1),
        "decode_tok_s_base_unwrapped": round(rate["base_unwrapped"], 1),
        "decode_tok_s_adapter": round(rate["adapter"], 1),
        "decode_ratio": decode_ratio,
        "decode_ratio_rounds": decode_ratio_rounds,
        "decode_ratio_vs_unwrapped": vs_unwrapped,
        "decode_ratio_vs_unwrapped_rounds": vs_unwrapped_rounds,
        "decode_ratio_wrapped_base_vs_unwrapped": rounded(within(rates, "base", "base_unwrapped"))[0],
        "step_ms_base": round(step["base"], 2),
        "step_ms_base_unwrapped": round(step["base_unwrapped"], 2),
        "step_ms_adapter": round(step["adapter"], 2),
        "decode_ratio_forward": round(step["base"] / step["adapter"], 3),
        "decode_ratio_forward_vs_unwrapped": round(step["base_unwrapped"] / step["adapter"], 3),
        "ttft_ms_512": round(med(ttft), 1),
        "attention": engine.model.config._attn_implementation,
        "group4_note": NOTES["group4"],
        "group4_tok_s": round(4 * args.group_tokens / sec["group"], 1),
        "group4_speedup": group_ratio,
        "group4_speedup_rounds": group_rounds,
        "step_ms_group4": round(step["group"], 2),
        "group4_speedup_forward": round(4 * step["adapter"] / step["group"], 2),
        "group4_lean_rows": bool(lean_rows),
        "group4_tokens_match_alone": together == alone,
        "memory_measure": "cuda_allocated" if device == "cuda" else "rss",
        "resident_bytes_per_adapter": round(per_adapter),
        "resident_tensor_bytes_per_adapter": round(statistics.mean(tensor_bytes.values())),
        "adapter_resident_over_file": round(per_adapter / file_bytes, 3),
        "mem_mb_drift_start": round(drift_start / 1e6, 1),
        "mem_drift_pct_1000_switches": round(100 * (drift_end - drift_start) / drift_start, 2),
        "drift_switches": args.drift_switches,
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
        group_peft, group_peft_rounds = rounded(within(seconds, "sequential_peft", "group_peft"), 2)
        cold_p50 = {kind: pct(v, 50) for kind, v in cold.items()}
        peft_p50 = {kind: pct(v, 50) for kind, v in peft_cold.items()}
        result.update({
            "switch_resident_ms_p50_peft": round(pct(peft_switch, 50), 3),
            "switch_resident_ms_p99_peft": round(pct(peft_switch, 99), 3),
            "adapter_cold_load_ms_p50_page_cache_peft": round(peft_p50["page_cache"], 1),
            "adapter_cold_load_ms_p50_disk_peft": round(peft_p50["disk"], 1),
            "adapter_cold_load_disk_cached_fraction_peft": max((x for x in peft_cold_left if x is not None), default=None),
            "decode_tok_s_base_peft": round(rate["base_peft"], 1),
            "decode_tok_s_adapter_peft": round(rate["adapter_peft"], 1),
            "decode_tok_s_base_peft_nohook": round(rate["base_peft_nohook"], 1),
            "decode_tok_s_adapter_peft_nohook": round(rate["adapter_peft_nohook"], 1),
            "decode_ratio_peft": rounded(within(rates, "adapter_peft", "base_peft"))[0],
            "decode_ratio_peft_vs_unwrapped": rounded(within(rates, "adapter_peft", "base_unwrapped"))[0],
            "decode_ratio_peft_nohook": rounded(within(rates, "adapter_peft_nohook", "base_peft_nohook"))[0],
            "step_ms_base_peft": round(step["base_peft"], 2),
            "step_ms_adapter_peft": round(step["adapter_peft"], 2),
            "decode_ratio_forward_peft": round(step["base_peft"] / step["adapter_peft"], 3),
            "group4_tok_s_peft": round(4 * args.group_tokens / sec["group_peft"], 1),
            "group4_tok_s_peft_nohook": round(4 * args.group_tokens / sec["group_peft_nohook"], 1),
            "group4_speedup_peft": group_peft,
            "group4_speedup_peft_rounds": group_peft_rounds,
            "switch_speedup_vs_peft": round(pct(peft_switch, 50) / pct(switch, 50), 1),
            "cold_load_speedup_vs_peft_page_cache": round(peft_p50["page_cache"] / cold_p50["page_cache"], 1),
            "cold_load_speedup_vs_peft_disk": round(peft_p50["disk"] / cold_p50["disk"], 1),
            "decode_adapter_speedup_vs_peft": rounded(within(rates, "adapter", "adapter_peft"), 2)[0],
            "decode_adapter_speedup_vs_peft_nohook": rounded(within(rates, "adapter", "adapter_peft_nohook"), 2)[0],
            "group4_speedup_vs_peft_group": rounded(within(seconds, "group_peft", "group"), 2)[0],
            "group4_speedup_vs_peft_group_nohook": rounded(within(seconds, "group_peft_nohook", "group"), 2)[0],
            "tokens_match_peft": {"base": texts["base"] == texts["base_peft"], "adapter": texts["adapter"] == texts["adapter_peft"]},
            "group4_tokens_match_peft": together == together_peft,
            "peft_cold_loads_changed_base_tokens": base_after_cold != texts["base_peft"],
        })
    return result


if __name__ == "__main__":
    sys.exit(main())
