"""Soak: N sessions x M requests through ChatService (the path the UI uses), with fewer
adapter slots than personas, compared with each session run alone.

    python bench/soak.py --sessions 8 --requests 100 --max-resident 3 [--model PATH_OR_ID]

Each session is one conversation with its own persona (a random LoRA adapter); every
request is a sampled reply with a fixed seed, so a reply that ran on the wrong adapter or
another request's random stream shows up as a mismatch with the same session run alone
(skip that pass with --no-check). Prints one JSON object: requests, errors, mismatches,
adapter loads, wall seconds, p50/p95/max latency per reply.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.chat import ChatService  # noqa: E402
from core.engine import Engine, GenerationSettings  # noqa: E402
from core.model_source import resolve_model  # noqa: E402
from core.logs import quiet_libraries  # noqa: E402
from core.synthetic import make_random_adapter  # noqa: E402
from storage.paths import chorus_home  # noqa: E402
from storage.store import Store  # noqa: E402


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else None


def seeded(home: Path, engine: Engine, adapters: list[Path]) -> ChatService:
    chat = ChatService(Store(home), engine)
    for i, folder in enumerate(adapters):
        chat.store.personas.create({"name": f"Soak {i}", "greeting": f"Soak persona {i} here."}, persona_id=f"soak-{i}")
        chat.attach_adapter(f"soak-{i}", folder)
    return chat


def session(chat, s, requests, tokens, out, errors, latencies):
    pid = f"soak-{s}"
    try:
        conv = chat.start_conversation(pid)["id"]
        for i in range(requests):
            settings = GenerationSettings(temperature=0.9, max_new_tokens=tokens, seed=100_000 * s + i)
            t0 = time.perf_counter()
            done = list(chat.send(conv, pid, f"Soak message {i} from session {s}.", settings))[-1]
            latencies.append(time.perf_counter() - t0)
            out[(s, i)] = (done.message["content"], done.message["persona_id"], done.message["meta"]["adapter_sha256"])
    except Exception as exc:
        errors.append(f"session {s}: {type(exc).__name__}: {exc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model id or folder (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per session")
    ap.add_argument("--max-resident", type=int, default=3, help="adapter slots (fewer than sessions: adapters get evicted)")
    ap.add_argument("--tokens", type=int, default=16, help="max new tokens per reply")
    ap.add_argument("--no-check", action="store_true", help="skip the solo pass that every reply is compared with")
    args = ap.parse_args()

    quiet_libraries()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    source = resolve_model(args.model, chorus_home(), progress=log)
    engine = Engine.load(source, max_resident=args.max_resident)
    with tempfile.TemporaryDirectory(prefix="chorus-soak-") as tmp:
        work = Path(tmp)
        adapters = [make_random_adapter(source.path, work / f"a{i}", seed=i, rank=8, base_name=source.name)
                    for i in range(args.sessions)]
        solo = {}
        if not args.no_check:
            log("solo pass...")
            chat = seeded(work / "solo", engine, adapters)
            for s in range(args.sessions):
                session(chat, s, args.requests, args.tokens, solo, [], [])
        log("concurrent pass...")
        chat = seeded(work / "load", engine, adapters)
        loads = []
        place = engine.pool.place
        engine.pool.place = lambda *a, **k: (loads.append(1), place(*a, **k))[1]
        together, errors, latencies = {}, [], []
        threads = [threading.Thread(target=session, args=(chat, s, args.requests, args.tokens, together, errors, latencies))
                   for s in range(args.sessions)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        integrity = chat.store.handle.db.execute("PRAGMA integrity_check").fetchone()[0]
    mismatches = sum(1 for k, v in solo.items() if together.get(k) != v)
    print(json.dumps({
        "model": source.name,
        "sessions": args.sessions,
        "requests": len(latencies),
        "planned": args.sessions * args.requests,
        "errors": len(errors),
        "error_samples": errors[:3],
        "mismatches": mismatches if solo else None,
        "adapter_loads": len(loads),
        "max_resident": args.max_resident,
        "wall_s": round(wall, 1),
        "p50_ms": round(pct(latencies, 50) * 1000) if latencies else None,
        "p95_ms": round(pct(latencies, 95) * 1000) if latencies else None,
        "max_ms": round(max(latencies) * 1000) if latencies else None,
        "db_integrity": integrity,
    }, indent=2))
    return 0 if not errors and not mismatches and integrity == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
