"""Benchmark of the served API: concurrent clients on different personas against the same
requests sent one at a time, through the real HTTP API.

    python bench/serve.py --json

Starts `python app.py serve` on the embedded model (or --model) with a temporary
CHORUS_HOME holding 8 personas, each with its own rank-16 LoRA adapter on all linear layers
(random, as bench/run.py makes them), and drives /v1/chat/completions with 1, 2, 4 and 8
concurrent clients, each on a different persona, each reply sampled with a fixed seed and
exactly --tokens tokens long (the `min_tokens` extension holds off the end of text). For
each count the same requests are also sent one after another. Rounds interleave the two
ways (one at a time, then together, for each count), and figures are medians over rounds.

Keys: `aggregate_tok_s_N` (N clients at once: all their tokens over the wall time),
`sequential_tok_s_N` (the same N requests one at a time), `speedup_N_clients` (their
ratio), `p50_latency_s_N` / `p95_latency_s_N` (request latency at N clients),
`solo_latency_s` (p50 latency of a request sent alone), `p95_latency_ratio_8` (p95 at 8
clients over a solo request), `group4_speedup_together` (4 personas answering one message
everyone-at-once against in turn; `group4_measured` says how: "group_chat_service", the
group chat service in this process on the same model after the server has stopped, or
"api_concurrent", 4 concurrent API requests against the same 4 one after another) and
`targets` (the issue's targets, met or not). Progress goes to stderr; with --json the
JSON object alone goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import med, pct  # noqa: E402

PROMPT = "Tell me about the last place you travelled to, and what you found there."
CLIENT_COUNTS = (1, 2, 4, 8)
TARGETS = {"speedup_8_clients": (">=", 3.0), "p95_latency_ratio_8": ("<=", 3.0), "group4_speedup_together": (">=", 2.5)}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument("--model", default=None, help="model to serve (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per reply (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them (default 3)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (seeds are fixed; default 0.8)")
    return parser


# the served app -------------------------------------------------------------------


def prepare_home(home: Path, source, work: Path, n: int = 8) -> list[str]:
    """`n` personas in a fresh store at `home`, each with its own adapter; their ids."""
    from bench.run import clone_adapter
    from core.adapters import inspect_adapter
    from core.synthetic import make_random_adapter
    from storage.store import Store

    log(f"making {n} rank-16 adapters on all linear layers...")
    first = [make_random_adapter(source.path, work / f"p{i}", seed=i, rank=16, alpha=32, targets="all-linear", scale=0.3,
                                 base_name=source.name) for i in range(min(n, 2))]
    folders = first + [clone_adapter(first[i % len(first)], work / f"p{i}", seed=i) for i in range(len(first), n)]
    store = Store(home)
    ids = []
    for i, folder in enumerate(folders):
        persona = store.personas.create({"name": f"Bench Voice {i + 1}", "description": f"Voice number {i + 1}, a travel writer.",
                                         "personality": "curious, precise"})
        store.adapters.add_version(persona["id"], folder, inspect_adapter(folder).store_meta())
        ids.append(persona["id"])
    return ids


class Served:
    def __init__(self, home: Path, model: str):
        self.port = free_port()
        self.err = open(home.parent / f"serve-{self.port}.log", "w")
        env = {**os.environ, "CHORUS_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "app.py", "serve", "--model", model, "--port", str(self.port),
                                      "--max-resident-adapters", "8"], cwd=ROOT, env=env, stdout=self.err, stderr=self.err)
        self.log_path = Path(self.err.name)

    def wait(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()}")
            if "Model ready" in self.log_path.read_text():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.3)
        raise SystemExit(f"the server did not come up in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


# requests -------------------------------------------------------------------------


def ask(client, persona: str, seed: int, args) -> tuple[float, int]:
    """(latency in seconds, completion tokens) of one chat request."""
    t0 = time.perf_counter()
    reply = client.chat.completions.create(model=persona, messages=[{"role": "user", "content": PROMPT}], seed=seed,
                                           temperature=args.temperature, max_tokens=args.tokens,
                                           extra_body={"min_tokens": args.tokens})
    return time.perf_counter() - t0, reply.usage.completion_tokens


def one_at_a_time(client, jobs, args) -> dict:
    t0 = time.perf_counter()
    done = [ask(client, p, s, args) for p, s in jobs]
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": sum(t for _, t in done), "latencies": [lat for lat, _ in done]}


def together(client, jobs, args) -> dict:
    done: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs) + 1)

    def run(i, persona, seed):
        try:
            barrier.wait()
            done[i] = ask(client, persona, seed, args)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, p, s)) for i, (p, s) in enumerate(jobs)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"wall": wall, "tokens": sum(t for _, t in done), "latencies": [lat for lat, _ in done]}


def measure_api(client, personas: list[str], args) -> dict:
    for p in personas:  # warm-up: every adapter resident, every code path run once
        ask(client, p, 1, argparse.Namespace(**{**vars(args), "tokens": 4}))
    seq: dict[int, list] = {c: [] for c in CLIENT_COUNTS}
    con: dict[int, list] = {c: [] for c in CLIENT_COUNTS}
    for r in range(args.rounds):
        for c in CLIENT_COUNTS:
            jobs = [(personas[i], 1000 + i) for i in range(c)]
            log(f"round {r + 1}/{args.rounds}: {c} client{'s' if c > 1 else ''}, one at a time, then together...")
            seq[c].append(one_at_a_time(client, jobs, args))
            con[c].append(together(client, jobs, args))
    out: dict = {}
    solo = [lat for run in seq[1] + con[1] for lat in run["latencies"]]
    out["solo_latency_s"] = round(med(solo), 3)
    for c in CLIENT_COUNTS:
        out[f"aggregate_tok_s_{c}"] = round(med([run["tokens"] / run["wall"] for run in con[c]]), 2)
        out[f"sequential_tok_s_{c}"] = round(med([run["tokens"] / run["wall"] for run in seq[c]]), 2)
        # The ratio within each round, then the median: a slow spell lands on both sides of one ratio.
        out[f"speedup_{c}_clients"] = round(med([(a["tokens"] / a["wall"]) / (b["tokens"] / b["wall"])
                                                 for a, b in zip(con[c], seq[c])]), 3)
        lats = [lat for run in con[c] for lat in run["latencies"]]
        out[f"p50_latency_s_{c}"] = round(pct(lats, 50), 3)
        out[f"p95_latency_s_{c}"] = round(pct(lats, 95), 3)
    out["p95_latency_ratio_8"] = round(out["p95_latency_s_8"] / out["solo_latency_s"], 3)
    return out


def measure_group_api(client, personas: list[str], args) -> float:
    jobs = [(personas[i], 2000 + i) for i in range(4)]
    ratios = []
    for _ in range(args.rounds):
        a, b = together(client, jobs, args), one_at_a_time(client, jobs, args)
        ratios.append((a["tokens"] / a["wall"]) / (b["tokens"] / b["wall"]))
    return round(med(ratios), 3)


def measure_group_service(home: Path, model: str, personas: list[str], args) -> float | None:
    """The group chat service, in this process: a 4-persona group answering one message in
    "together" mode against "turn" mode. None when the service is not there (or differs)."""
    try:
        from core.chat import ChatService
        from core.engine import Engine, GenerationSettings
        from core.group_chat import GroupChatService
        from core.model_source import resolve_model
        from storage.store import Store
    except ImportError:
        return None
    store = Store(home)
    engine = Engine.load(resolve_model(model, home, progress=log), max_resident=8)
    service = GroupChatService(store, ChatService(store, engine))
    members = personas[:4]

    def round_s(mode: str) -> float:
        conv = service.start_group(members, title=f"bench {mode}", mode=mode)
        settings = GenerationSettings(temperature=args.temperature, max_new_tokens=args.tokens, min_new_tokens=args.tokens, seed=7)
        t0 = time.perf_counter()
        for _ in service.send(conv["id"], PROMPT, settings):
            pass
        return time.perf_counter() - t0

    round_s("together")  # warm-up: the four adapters resident
    ratios = []
    for _ in range(args.rounds):
        ratios.append(round_s("turn") / round_s("together"))  # same tokens either way: the time ratio is the speed ratio
    return round(med(ratios), 3)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import openai

    from core.logs import quiet_libraries
    from core.model_source import resolve_model
    from storage.paths import chorus_home

    quiet_libraries()
    source = resolve_model(args.model, chorus_home(), progress=log)  # converted once, in the usual home
    scratch = Path(tempfile.mkdtemp(prefix="chorus-bench-serve-"))
    home = scratch / "home"
    result: dict = {"model": source.name, "tokens": args.tokens, "rounds": args.rounds, "clients": list(CLIENT_COUNTS),
                    "temperature": args.temperature}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
            personas = prepare_home(home, source, scratch / "adapters")
            log("starting `python app.py serve`...")
            served = Served(home, str(source.path))
            try:
                served.wait()
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="local", max_retries=0, timeout=600)
                result.update(measure_api(client, personas, args))
                group = None
                if not _has_group_service():
                    log("group of 4: no group chat service here; measuring 4 concurrent API requests against in turn...")
                    group, how = measure_group_api(client, personas, args), "api_concurrent"
            finally:
                served.stop()
            if group is None:
                log("group of 4: the group chat service, together against in turn...")
                try:
                    group, how = measure_group_service(home, str(source.path), personas, args), "group_chat_service"
                except Exception as exc:  # a service whose interface moved: say so and measure over the API
                    log(f"the group chat service could not be measured ({type(exc).__name__}: {exc}); using the API instead")
                    served = Served(home, str(source.path))
                    try:
                        served.wait()
                        client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="local", max_retries=0, timeout=600)
                        group, how = measure_group_api(client, personas, args), "api_concurrent"
                    finally:
                        served.stop()
            result["group4_speedup_together"] = group
            result["group4_measured"] = how
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["targets"] = {key: {"target": f"{op} {bound}", "met": (result[key] >= bound if op == ">=" else result[key] <= bound)}
                         for key, (op, bound) in TARGETS.items()}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _has_group_service() -> bool:
    try:
        import core.group_chat  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
