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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--model", default=None, help="model id or folder (default: embedded)")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--cold-loads", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
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

    log("cold loads...")
    cold = []
    for i in range(args.cold_loads):
        r = refs[i % 2]
        engine.forget(r.persona_id)
        t0 = time.perf_counter()
        name = engine.ensure_adapter(r)
        with engine._lock:
            engine._activate(name)
        cold.append((time.perf_counter() - t0) * 1000)

    log("resident switches...")
    names = [engine.ensure_adapter(r) for r in refs]
    switch = []
    for i in range(args.switches):
        r = refs[i % len(refs)]
        t0 = time.perf_counter()
        name = engine.ensure_adapter(r)
        with engine._lock:
            engine._activate(name)
        switch.append((time.perf_counter() - t0) * 1000)

    log("decode...")
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a lighthouse keeper."}], add_generation_prompt=True, tokenize=True
    )
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    engine.generate(ids, None, GenerationSettings(temperature=0, max_new_tokens=4, seed=0))  # warm-up
    base = decode_tok_s(engine, ids, None, args.decode_tokens, args.repeats)
    with_adapter = decode_tok_s(engine, ids, refs[0], args.decode_tokens, args.repeats)

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
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
