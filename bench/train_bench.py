"""Persona-training benchmark on the embedded model: the default pipeline on a 1,000-message
export, and chat latency in the serving process before and while it trains.

    python bench/train_bench.py [--messages 1000] [--steps N] [--chat-tokens 32] [--no-chat] [--config JSON]

Prints one JSON object: s/step, trained tokens/s, peak RSS of the training process, wall
time of the whole run, the plan (micro-batch picked from the memory budget, gradient
accumulation), the loss curve (training and held-out), held-out loss and perplexity
before/after, and the median latency of a fixed-length greedy chat reply before and
during training. Uses the worker process and TrainingService exactly as the app does.

"Trained tokens" are the non-padding tokens of the training batches (prompt and reply:
everything that goes through forward and backward), per second of the training stage
with the held-out evaluations in it left out. Peak RSS is the worker's own VmHWM over
the whole run (loading, evaluations, training, samples), reset at its start: `ru_maxrss`
would count the peak of the process that spawned it (core/training/memory.py).
`CHORUS_MMAP_THRESHOLD=off` in the environment leaves glibc's mmap threshold dynamic
(the worker fixes it at 4 MB; a number sets another), for a like-for-like comparison. With `--no-chat` nothing else
runs while it trains: use it for the tokens/s and memory figures.
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

from bench.train_synth_export import write_export  # noqa: E402
from core.engine import Engine, GenerationSettings  # noqa: E402
from core.model_source import ModelSource, resolve_model  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.training.service import TrainingService  # noqa: E402
from storage.store import Store  # noqa: E402


def chat_latency(engine: Engine, ids: list[int], tokens: int) -> float:
    s = GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)
    t0 = time.perf_counter()
    engine.generate(ids, None, s)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None, help="default: the automatic plan")
    ap.add_argument("--chat-tokens", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-chat", action="store_true", help="no chat replies while it trains (for the tokens/s figure)")
    ap.add_argument("--config", default=None, help='TrainConfig fields as JSON, e.g. {"memory_budget_mb": 4096}')
    a = ap.parse_args()
    quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    export = write_export(tmp / "chat.txt", a.messages)
    store = Store(tmp / "home")
    source = ModelSource(Path(a.model).name, Path(a.model)) if a.model else resolve_model(None, store.home, lambda m: None)
    engine = Engine.load(source)
    svc = TrainingService(store, engine)
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about your day."}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    chat_latency(engine, ids, 4)  # warm-up
    idle = [chat_latency(engine, ids, a.chat_tokens) for _ in range(3)]
    config = {**json.loads(a.config or "{}"), **({"max_steps": a.steps} if a.steps else {})}
    t0 = time.perf_counter()
    run_id = svc.start(export, "Mara", persona_name="Mara", consent=True, config=config)
    busy = []
    while True:
        st = svc.status(run_id, history=False)
        if st["state"] not in ("queued", "running", "cancelling"):
            break
        if st["stage"] == "training" and st["step"] >= 2 and not a.no_chat:
            busy.append(chat_latency(engine, ids, a.chat_tokens))
            time.sleep(2)
        else:
            time.sleep(1)
    wall = time.perf_counter() - t0
    st = svc.status(run_id)
    svc.poll()
    ev, result, live = st["evaluation"], st["result"] or {}, st
    out = {
        "state": st["state"],
        "error": st["error"],
        "messages": a.messages,
        "plan": st["plan"],
        "steps": st["step"],
        "s_per_step": live["s_per_step"],
        "trained_tokens_per_s": live["tokens_per_s"],
        "trained_tokens": "non-padding tokens (prompt and reply) through forward and backward, per second of training, evaluations excluded",
        "train_seconds": result.get("train_seconds"),
        "run_wall_seconds": round(wall, 1),
        "worker_peak_rss_mb": result.get("peak_rss_mb"),
        "data": {k: (st.get("data") or {}).get(k) for k in ("train", "validation", "held_out_honesty", "truncated", "train_label_tokens")},
        "loss_curve": st["history"],
        "heldout_before": ev.get("before"),
        "heldout_after": ev.get("after"),
        "samples": ev.get("samples"),
        "chat_reply_s_idle_median": round(statistics.median(idle), 2),
        "chat_reply_s_training_median": round(statistics.median(busy), 2) if busy else None,
        "chat_reply_tokens": a.chat_tokens,
        "chat_samples_during_training": len(busy),
        "resident_after_poll": engine.resident(),
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
