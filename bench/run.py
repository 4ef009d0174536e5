"""Foundation benchmark on the embedded model: switching, cold loads, reload, memory, decode.

    python bench/run.py --json

Prints one JSON object (see the README for what each key means). Figures are medians over
repeats; these machines are noisy, so compare ratios taken within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.engine import AdapterRef, Engine, GenerationSettings  # noqa: E402
from core.model_source import EMBEDDED_NAME, resolve_model  # noqa: E402
from core.runtime import quiet_libraries  # noqa: E402
from core.synthetic import ALL_LINEAR, make_random_adapter  # noqa: E402
from storage.paths import chorus_home  # noqa: E402


def pct(values, q):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def decode_tok_s(engine, ids, adapter, tokens, repeats):
    rates = []
    for _ in range(repeats):
        s = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)
        engine.generate(ids, adapter, s)
        rates.append(engine.last_generation["tokens"] / engine.last_generation["seconds"])
    return statistics.median(rates)


def ttft_ms(engine, ids, adapter, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stream = engine.stream(ids, adapter, GenerationSettings(temperature=0, max_new_tokens=4, min_new_tokens=4, seed=0))
        next(stream)
        times.append((time.perf_counter() - t0) * 1000)
        for _ in stream:
            pass
    return statistics.median(times)


def switch_ms(engine, ref) -> float:
    """Milliseconds from naming a persona's adapter to it being the one the model runs."""
    t0 = time.perf_counter()
    name = engine.ensure_adapter(ref)
    with engine._lock:
        engine._activate(name)
    return (time.perf_counter() - t0) * 1000


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


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


def stock_peft(source, adapters, ids, args, log) -> dict:
    """The same measurements through peft's own API on a second NF4 copy of the model."""
    import torch
    from peft import PeftModel

    from core.loader import load_base

    model, tok, _ = load_base(source)
    peft_model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="p0")
    for i, a in enumerate(adapters[1:4], start=1):
        peft_model.load_adapter(str(a), adapter_name=f"p{i}")
    peft_model.eval()
    log("stock peft: resident switches...")
    switch = []
    for i in range(args.switches):
        t0 = time.perf_counter()
        peft_model.set_adapter(f"p{i % 4}")
        switch.append((time.perf_counter() - t0) * 1000)
    log("stock peft: cold loads...")
    cold = []
    for i in range(args.cold_loads):
        t0 = time.perf_counter()
        peft_model.load_adapter(str(adapters[4 + i % 2]), adapter_name="cold")
        peft_model.set_adapter("cold")
        cold.append((time.perf_counter() - t0) * 1000)
        peft_model.set_adapter("p0")
        peft_model.delete_adapter("cold")
    log("stock peft: decode...")
    x = torch.tensor([ids])

    def rate():
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = peft_model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=args.decode_tokens,
                                          min_new_tokens=args.decode_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            rates.append((out.shape[1] - x.shape[1]) / (time.perf_counter() - t0))
        return statistics.median(rates)

    peft_model.set_adapter("p0")
    with_adapter = rate()
    with peft_model.disable_adapter():
        base = rate()
    return {
        "switch_resident_ms_p50_peft": round(pct(switch, 50), 3),
        "switch_resident_ms_p99_peft": round(pct(switch, 99), 3),
        "adapter_cold_load_ms_p50_peft": round(pct(cold, 50), 1),
        "decode_tok_s_base_peft": round(base, 1),
        "decode_tok_s_adapter_peft": round(with_adapter, 1),
        "decode_ratio_peft": round(with_adapter / base, 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--model", default=None, help="model id or folder (default: embedded)")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--cold-loads", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drift-switches", type=int, default=1000)
    parser.add_argument("--skip-peft", action="store_true", help="leave out the stock peft comparison")
    args = parser.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    quiet_libraries()

    source = resolve_model(args.model, chorus_home(), progress=lambda m: log(m))
    work = Path(tempfile.mkdtemp(prefix="chorus-bench-"))
    log("making rank-16 adapters on all linear layers...")
    adapters = [
        make_random_adapter(source.path, work / f"p{i}", seed=i, rank=16, alpha=32, targets=ALL_LINEAR, scale=0.3, base_name=source.name)
        for i in range(4)
    ]
    adapters += [clone_adapter(adapters[i % 4], work / f"p{i}", seed=i) for i in range(4, 20)]
    adapter_mb = (adapters[0] / "adapter_model.safetensors").stat().st_size / 1e6

    log("loading bf16 for the footprint comparison...")
    bf16 = Engine.load(source, quantize=False)
    footprint_bf16 = bf16.info.footprint_mb
    del bf16

    log("loading NF4 (timed: what a switch by reloading would cost)...")
    reloads = []
    engine = None
    for _ in range(2):
        t0 = time.perf_counter()
        engine = Engine.load(source, max_resident=8)
        reloads.append(time.perf_counter() - t0)
    refs = [AdapterRef(f"p{i}", a) for i, a in enumerate(adapters)]
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}], add_generation_prompt=True, tokenize=True
    )
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    engine.generate(ids, None, GenerationSettings(temperature=0, max_new_tokens=4, seed=0))  # warm-up (packs 4-bit weights)
    rss0 = rss_mb()
    for r in refs[:8]:
        engine.ensure_adapter(r)
    per_adapter_mb = (rss_mb() - rss0) / 8

    log("cold loads...")
    cold = []
    for i in range(args.cold_loads):
        r = refs[8 + i % 2]
        engine.forget(r.persona_id)
        cold.append(switch_ms(engine, r))

    log("resident switches...")
    switch = [switch_ms(engine, refs[i % 4]) for i in range(args.switches)]

    log("decode...")
    base = decode_tok_s(engine, ids, None, args.decode_tokens, args.repeats)
    with_adapter = decode_tok_s(engine, ids, refs[0], args.decode_tokens, args.repeats)

    log("group of 4 personas...")
    fixed = GenerationSettings(temperature=0, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, seed=0)
    group = [(ids, refs[i]) for i in range(4)]
    for r in refs[:4]:
        engine.ensure_adapter(r)
    t0 = time.perf_counter()
    for i, r in group:
        engine.generate(i, r, fixed)
    sequential_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.generate_group(group, fixed)
    group_s = time.perf_counter() - t0

    log(f"{args.drift_switches} random switches among 20 personas, 8 resident...")
    import random

    rng = random.Random(0)
    for r in refs[:8]:
        engine.ensure_adapter(r)
    drift_start = rss_mb()
    for _ in range(args.drift_switches):
        switch_ms(engine, rng.choice(refs))
    drift_end = rss_mb()

    long_ids = (engine.tokenizer("The lighthouse keeper wrote in his log. " * 80)["input_ids"])[:512]
    ttft = ttft_ms(engine, long_ids, None, args.repeats)

    result = {
        "model": source.name,
        "device": engine.info.device,
        "adapter_rank": 16,
        "adapter_file_mb": round(adapter_mb, 1),
        "switch_resident_ms_p50": round(pct(switch, 50), 3),
        "switch_resident_ms_p99": round(pct(switch, 99), 3),
        "adapter_cold_load_ms_p50": round(pct(cold, 50), 1),
        "full_reload_s": round(statistics.median(reloads), 2),
        "footprint_nf4_mb": engine.info.footprint_mb,
        "footprint_bf16_mb": footprint_bf16,
        "decode_tok_s_base": round(base, 1),
        "decode_tok_s_adapter": round(with_adapter, 1),
        "decode_ratio": round(with_adapter / base, 3),
        "ttft_ms_512": round(ttft, 1),
        "group4_speedup": round(sequential_s / group_s, 2),
        "adapter_resident_mb": round(per_adapter_mb, 1),
        "adapter_resident_over_file": round(per_adapter_mb / adapter_mb, 2),
        "rss_drift_pct_1000_switches": round(100 * (drift_end - drift_start) / drift_start, 2),
        "slots": engine.pool.slot_count(),
    }
    if not args.skip_peft:
        del engine
        stock = stock_peft(source, adapters, ids, args, log)
        result.update(stock)
        result["switch_speedup_vs_peft"] = round(stock["switch_resident_ms_p50_peft"] / result["switch_resident_ms_p50"], 1)
        result["cold_load_speedup_vs_peft"] = round(stock["adapter_cold_load_ms_p50_peft"] / result["adapter_cold_load_ms_p50"], 1)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
