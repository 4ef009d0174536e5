"""Per-family figures on the tiny random-weight models of core/synthetic_families.py.

    python bench/families.py [--families llama3,phi3] [--tokens 32] [--rounds 5] > families.json

For each family (2 layers, hidden 64, SmolLM2's tokenizer, NF4): the adapter switch (warm:
between two resident adapters; cold: an evicted adapter read back into its slot), the decode
time with an adapter against the bare base (greedy, a fixed number of tokens, interleaved
rounds; the ratio is tokens per second with the adapter over without, as in
docs/performance.md, the median of the per-round ratios), and five QLoRA steps through the
real trainer (training loss at the first and last step, held-out loss on the same examples
before and after, seconds per step). Models this small measure the per-layer overheads
(LoRA, attention, Python), not a real model's arithmetic: docs/models.md says how to read
them. Progress goes to stderr, one JSON object to stdout.
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

from core.synthetic_families import FAMILIES, build_tiny_family, linear_names  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tokenizer_dir(work: Path) -> Path:
    """SmolLM2's tokenizer: the tests' cached copy if there is one, else read from the GGUF."""
    import os

    cached = Path(os.environ.get("CHORUS_TEST_CACHE", Path.home() / ".cache" / "chorus-tests")) / "smollm2-tokenizer"
    if (cached / "tokenizer.json").is_file():
        return cached
    from transformers import AutoTokenizer

    from core.model_source import find_embedded_gguf

    gguf = find_embedded_gguf()
    dest = work / "tokenizer"
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(dest)
    return dest


def serving(family: str, model_dir: Path, work: Path, tokens: int, rounds: int) -> dict:
    from core.engine import AdapterRef, Engine, GenerationSettings
    from core.model_source import ModelSource
    from core.synthetic import make_random_adapter

    refs = [AdapterRef(n, make_random_adapter(model_dir, work / n, seed=i, rank=16, alpha=32, targets=list(linear_names(family))))
            for i, n in enumerate("abc")]
    engine = Engine.load(ModelSource(family, model_dir), max_resident=2)
    prompt = engine.tokenizer.encode("Tell me about the sea and the ships that sail on it.")
    settings = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0)

    def switch_ms(ref) -> float:
        t0 = time.perf_counter()
        name = engine.ensure_adapter(ref)
        with engine._lock:
            engine._activate(name)
        return (time.perf_counter() - t0) * 1000

    warm, cold = [], []
    for _ in range(rounds):
        switch_ms(refs[0]), switch_ms(refs[1])  # both resident
        warm.append(switch_ms(refs[0]))
        cold.append(switch_ms(refs[2]))  # evicts refs[1] (least recent), refills its slot
    engine.generate(prompt, refs[0], settings)  # warm-up
    engine.generate(prompt, None, settings)
    per_round = []
    for _ in range(rounds):
        times = {}
        for key, ref in (("adapter", refs[0]), ("base", None)):
            result: dict = {}
            "".join(engine.stream(prompt, ref, settings, result=result))
            times[key] = result["seconds"]
        per_round.append(times["base"] / times["adapter"])  # tok/s with the adapter / without
    gen = engine.last_generation
    return {
        "fast_paths": engine.status()["fast_paths"]["summary"],
        "switch_warm_ms": round(statistics.median(warm), 3),
        "switch_cold_ms": round(statistics.median(cold), 3),
        "decode_ratio_adapter_to_base": round(statistics.median(per_round), 3),
        "decode_ratio_rounds": [round(r, 3) for r in per_round],
        "base_tok_s": gen.get("tok_s"),
    }


def training(model_dir: Path, work: Path) -> dict:
    import torch

    from core.model_source import ModelSource
    from core.training.config import TrainConfig, plan
    from core.training.dataset import encode_all
    from core.training.evaluate import heldout_loss
    from core.training.qlora import add_lora, load_for_training
    from core.training.trainer import fit

    examples = [{"messages": [{"role": "user", "content": f"question {i}?"},
                              {"role": "assistant", "content": f"Arr, answer {i}, matey."}]} for i in range(6)]
    model, tok, _ = load_for_training(ModelSource(model_dir.name, model_dir))
    torch.manual_seed(0)
    cfg = TrainConfig(rank=4, alpha=8, dropout=0.0, max_steps=5, batch_size=2, learning_rate=1e-2,
                      warmup_ratio=0.0, eval_every=100, save_every=100, nice=0)
    model = add_lora(model, cfg, gradient_checkpointing=False)
    items = encode_all(tok, "You are Mara.", examples, 64).items
    before = heldout_loss(model, items, tok.pad_token_id)["loss"]
    rows: list = []
    t0 = time.perf_counter()
    fit(model, tok, items, [], plan(cfg, len(items), 0, [len(i["input_ids"]) for i in items], "cpu"), cfg, work / "run",
        report=rows.append)
    seconds = time.perf_counter() - t0
    losses = [r["loss"] for r in rows if r.get("event") == "train"]
    return {
        "targets": sorted(model.peft_config["default"].target_modules),
        "train_loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
        "heldout_loss_before_after": [round(before, 3), round(heldout_loss(model, items, tok.pad_token_id)["loss"], 3)],
        "s_per_step": round(seconds / max(1, len(losses)), 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, from: " + ", ".join(FAMILIES))
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per timed reply")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    args = ap.parse_args(argv)
    from core.logs import quiet_libraries

    quiet_libraries()
    out = {}
    with tempfile.TemporaryDirectory(prefix="chorus-families-") as tmp:
        work = Path(tmp)
        tok = tokenizer_dir(work)
        for family in args.families.split(","):
            if family not in FAMILIES:
                ap.error(f"unknown family '{family}'; choose from {', '.join(FAMILIES)}")
            log(f"{family}: building the tiny model")
            model_dir = build_tiny_family(family, tok, work / family)
            log(f"{family}: serving")
            result = serving(family, model_dir, work / f"{family}-adapters", args.tokens, args.rounds)
            log(f"{family}: training")
            result.update(training(model_dir, work / f"{family}-train"))
            out[family] = result
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
