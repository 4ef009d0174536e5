"""GPU check: Chorus's whole path on a CUDA machine in a few minutes, as one JSON object.

    python bench/gpu_check.py [--model HUB_ID | FOLDER | FILE.gguf]

`--model` takes what the app's `--model` takes (core/model_source.py), so the same check
runs a real 1-8B model: `--model Qwen/Qwen2.5-1.5B-Instruct` downloads it once into the hub
cache. In order: engine load (NF4 on cuda:0; the memory estimate against the footprint and
the load's CUDA peak), a reply without an adapter, persona switches (first
load, another persona, back to a resident one), a reply with an adapter, a group of
personas decoded together, a QLoRA training run of 20 steps through the app's training
service and worker (the loss must go down), the hot-load of the trained adapter into the
engine and a reply with it, and bench/run.py's main figures (a subprocess with reduced
rounds). Each check records ok, seconds and its figures; a failed check records its error
and the run goes on where it can. Prints ONE JSON object on stdout (progress on stderr);
exit status 0 when every check passed.

Without CUDA it prints {"cuda": false, "skipped": "..."} and exits 0. `--rehearse-on-cpu`
runs every stage on the CPU (the tests use it with a tiny model, so that this script's own
code is exercised where no GPU is lent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# bench/run.py's headline keys, copied into this check's output.
BENCH_KEYS = (
    "device", "switch_resident_ms_p50", "switch_resident_ms_p50_peft", "adapter_cold_load_ms_p50_page_cache",
    "adapter_cold_load_ms_p50_disk", "adapter_cold_load_ms_p50_page_cache_peft", "adapter_cold_load_ms_p50_disk_peft",
    "adapter_first_load_ms_p50", "decode_tok_s_base", "decode_tok_s_base_unwrapped", "decode_tok_s_adapter",
    "decode_tok_s_adapter_peft", "decode_ratio", "decode_ratio_vs_unwrapped", "decode_ratio_peft",
    "decode_ratio_peft_nohook", "group4_speedup", "group4_speedup_peft", "group4_speedup_vs_peft_group",
    "group4_lean_rows", "group4_tokens_match_alone", "group4_tokens_match_peft", "tokens_match_peft",
    "ttft_ms_512", "footprint_nf4_mb", "footprint_bf16_mb", "memory_measure", "resident_bytes_per_adapter",
    "adapter_resident_over_file", "mem_drift_pct_1000_switches", "full_reload_s", "attention", "group4_note",
)
BENCH_ARGS = ("--switches", "50", "--cold-loads", "3", "--repeats", "1", "--decode-rounds", "2", "--group-rounds", "2",
              "--drift-switches", "100", "--decode-tokens", "32", "--group-tokens", "32")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


class Checks:
    """Runs named checks, recording each one's ok, seconds, figures and error."""

    def __init__(self):
        self.results: dict[str, dict] = {}

    @contextlib.contextmanager
    def check(self, name: str):
        log(f"[gpu_check] {name}...")
        row = self.results[name] = {"ok": False}
        t0 = time.perf_counter()
        try:
            yield row
            row["ok"] = all(v for k, v in row.items() if k.startswith("ok_"))  # every ok_* figure of the check
        except Exception as exc:  # recorded in the JSON; the next independent check still runs
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        finally:
            row["seconds"] = round(time.perf_counter() - t0, 2)
            log(f"[gpu_check] {name}: {'ok' if row['ok'] else 'FAILED'} ({row['seconds']} s)")

    def passed(self, name: str) -> bool:
        return self.results.get(name, {}).get("ok", False)


def mean(values: list) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def greedy(tokens: int):
    from core.engine import GenerationSettings

    return GenerationSettings(temperature=0, max_new_tokens=tokens, min_new_tokens=tokens, seed=0, repetition_penalty=1.0)


def run_checks(args, want: str, work: Path) -> dict:
    import torch

    from bench.run import switch_ms
    from bench.train_synth_export import write_export
    from core.device import model_device
    from core.engine import AdapterRef, Engine
    from transformers import AutoConfig

    from core.logs import quiet_libraries
    from core.memory_fit import estimate
    from core.model_source import resolve_model
    from core.synthetic import make_random_adapter
    from core.training.service import TrainingService
    from storage.paths import chorus_home
    from storage.store import Store

    quiet_libraries()
    checks = Checks()
    out: dict = {"checks": checks.results}
    source = resolve_model(args.model, chorus_home(), progress=log)
    out["model"] = source.name

    with checks.check("engine_load") as row:
        engine = Engine.load(source)
        row.update(device=engine.info.device, model_device=str(model_device(engine.model)), load_s=engine.info.load_s,
                   footprint_mb=engine.info.footprint_mb, quantization=engine.info.quantization)
        row["ok_on_device"] = engine.info.device == want and model_device(engine.model).type == want
        # The memory estimate the loader checked against what was free (core/memory_fit.py),
        # against what the load took.
        est = estimate(AutoConfig.from_pretrained(str(source.path)), context=engine.context_limit, device=want)
        row.update(estimate_weights_mb=round(est.weights_bytes / 1e6, 1), estimate_total_mb=round(est.total_bytes / 1e6, 1))
        row["ok_estimate_covers_footprint"] = est.weights_bytes >= engine.info.footprint_mb * 1e6
        if want == "cuda":
            row["cuda_memory_mb"] = round(torch.cuda.memory_allocated() / 1e6, 1)
            row["cuda_load_peak_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
            row["ok_estimate_covers_load_peak"] = row["cuda_load_peak_mb"] * 1e6 <= est.total_bytes
    if not checks.passed("engine_load"):
        return out

    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True, tokenize=True)
    ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    # scale 1.0: random adapters that visibly change every reply, so a reply that ignored
    # its adapter shows up as the base's text
    refs = [AdapterRef(f"gpu-{i}", make_random_adapter(source.path, work / f"a{i}", seed=i, rank=16, alpha=32,
                                                        targets="all-linear", scale=1.0, base_name=source.name))
            for i in range(3)]
    tokens = args.tokens

    with checks.check("reply_without_adapter") as row:
        base_text = engine.generate(ids, None, greedy(tokens))
        row.update(tokens=engine.last_generation["tokens"], tok_s=engine.last_generation["tok_s"], text=base_text[:120])
        row["ok_tokens"] = engine.last_generation["tokens"] == tokens

    with checks.check("persona_switch") as row:
        row["first_load_ms"] = round(switch_ms(engine, refs[0]), 2)
        row["another_persona_first_load_ms"] = round(switch_ms(engine, refs[1]), 2)
        row["resident_switch_ms"] = round(switch_ms(engine, refs[0]), 3)
        row["resident"] = engine.resident()
        row["ok_resident"] = {r.persona_id for r in refs[:2]} <= set(engine.resident())

    alone = {}
    with checks.check("reply_with_adapter") as row:
        for ref in refs:
            alone[ref.persona_id] = engine.generate(ids, ref, greedy(tokens))
        row.update(tok_s=engine.last_generation["tok_s"], text=alone[refs[0].persona_id][:120])
        row["ok_adapter_changes_reply"] = all(text != base_text for text in alone.values())
        row["ok_personas_differ"] = len(set(alone.values())) == len(alone)

    with checks.check("group") as row:
        requests = [(ids, ref) for ref in refs] + [(ids, None)]
        together = engine.generate_group(requests, greedy(tokens))
        expected = [alone.get(ref.persona_id) if ref else base_text for _, ref in requests]
        row.update(rows=len(together), lean_rows=engine.last_generation.get("lean_rows"), tok_s=engine.last_generation["tok_s"])
        # Informational: a batch and a single row run different kernels on a GPU, so a row can
        # part from its single-row reply after a near-tie; a voice mixed up would differ at once.
        row["rows_matching_alone"] = sum(a == b for a, b in zip(together, expected))
        row["rows_same_first_word_as_alone"] = sum(a.split()[:1] == b.split()[:1] for a, b in zip(together, expected) if b is not None)
        row["ok_tokens"] = len(together) == len(requests) and engine.last_generation["tokens"] == tokens * len(requests)

    with checks.check("training") as row:
        store = Store(work / "home")
        svc = TrainingService(store, engine)
        export = write_export(work / "chat.txt", args.messages)
        config = {"max_steps": args.steps, "samples": 1, "sample_max_new_tokens": 16, "max_eval_examples": 32, "nice": 0,
                  **json.loads(args.train_config)}
        run_id = svc.start(export, "Mara", persona_name="Mara GPU check", consent=True, config=config)
        st = svc.wait(run_id, timeout=args.train_timeout, interval=1.0)
        if st["state"] in ("queued", "running", "cancelling"):  # out of time: stop it before its folder goes
            svc.cancel(run_id)
            svc.wait(run_id, timeout=60, interval=1.0)
        history = [loss for _, loss in (st.get("history") or {}).get("train", [])]
        ev = st.get("evaluation") or {}
        before, after = (ev.get("before") or {}).get("loss"), (ev.get("after") or {}).get("loss")
        plan = st.get("plan") or {}
        row.update(state=st["state"], run_error=st["error"], steps=st["step"], plan_optimizer=plan.get("optimizer"),
                   plan_gradient_checkpointing=plan.get("gradient_checkpointing"), s_per_step=st.get("s_per_step"),
                   tokens_per_s=st.get("tokens_per_s"), train_loss_first_half=mean(history[: len(history) // 2]),
                   train_loss_second_half=mean(history[len(history) // 2 :]),
                   heldout_before=before, heldout_after=after, peak_rss_mb=(st.get("result") or {}).get("peak_rss_mb"))
        if st["state"] != "finished":
            from core.training.runner import tail
            from core.training.worker import run_folder

            row["worker_log"] = tail(run_folder(store.home, run_id) / "worker.log", 15)
        row["ok_finished"] = st["state"] == "finished" and st["step"] == args.steps
        row["ok_train_loss_down"] = len(history) >= 4 and row["train_loss_second_half"] < row["train_loss_first_half"]
        row["ok_heldout_loss_down"] = before is not None and after is not None and after < before
        if want == "cuda":  # the plan's GPU choices
            row["ok_cuda_plan"] = plan.get("optimizer") == "paged_adamw_8bit"

    with checks.check("hot_load") as row:
        if not checks.passed("training"):
            raise RuntimeError("no trained adapter (the training check failed)")
        t0 = time.perf_counter()
        svc.poll()  # what the app calls every few seconds: loads the finished run's adapter
        row["poll_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        persona_id = store.training.get(run_id)["persona_id"]
        persona = store.personas.get(persona_id)
        adapter = store.adapters.get(persona["adapter_id"])
        row["ok_resident"] = persona_id in engine.resident()
        ref = AdapterRef(persona_id, store.adapters.folder(adapter), adapter["sha256"])
        text = engine.generate(ids, ref, greedy(tokens))
        row.update(text=text[:120], tok_s=engine.last_generation["tok_s"])
        row["ok_tokens"] = engine.last_generation["tokens"] == tokens

    del engine
    if want == "cuda":
        torch.cuda.empty_cache()
    if args.skip_bench:
        return out
    with checks.check("bench") as row:
        cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--json", "--model", str(source.path), *BENCH_ARGS, *args.bench_arg]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.bench_timeout, cwd=str(ROOT))
        row["command"] = " ".join(cmd[1:])
        if done.returncode != 0:
            raise RuntimeError(f"bench/run.py exited {done.returncode}: {done.stderr[-1500:]}")
        figures = json.loads(done.stdout)
        out["bench"] = {k: figures[k] for k in BENCH_KEYS if k in figures}
        if "tokens_match_peft" in figures:  # absent with --bench-arg=--skip-peft
            row["ok_tokens_match_peft"] = figures["tokens_match_peft"] == {"base": True, "adapter": True}
        row["ok_device"] = figures.get("device") == want
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a hub id (downloaded once), a model folder or a .gguf file "
                    "(converted once); default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--steps", type=int, default=20, help="training steps")
    ap.add_argument("--messages", type=int, default=400, help="messages in the synthetic chat export trained on")
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per reply")
    ap.add_argument("--train-config", default="{}", help="training settings (JSON) over this check's own")
    ap.add_argument("--train-timeout", type=float, default=150)
    ap.add_argument("--bench-timeout", type=float, default=150)
    ap.add_argument("--skip-bench", action="store_true", help="leave out bench/run.py's figures")
    ap.add_argument("--bench-arg", action="append", default=[], help="an extra argument for bench/run.py (repeatable)")
    ap.add_argument("--rehearse-on-cpu", action="store_true", help="run every stage on the CPU (tests of this script)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.rehearse_on_cpu:
        print(json.dumps({"cuda": False, "skipped": f"torch {torch.__version__} sees no CUDA device (built for CUDA "
                                                     f"{torch.version.cuda or 'none'}); there is nothing to check here"}))
        return 0
    want = "cpu" if args.rehearse_on_cpu else "cuda"
    os.environ["CHORUS_DEVICE"] = want  # this process, the training worker and the bench all on it
    head = {"cuda": want == "cuda", "device": want, "torch": torch.__version__, "cuda_version": torch.version.cuda}
    if want == "cuda":
        head["gpu"] = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    real_stdout = sys.stdout
    with tempfile.TemporaryDirectory(prefix="chorus-gpu-check-") as tmp, contextlib.redirect_stdout(sys.stderr):
        try:
            out = run_checks(args, want, Path(tmp))
        except Exception as exc:  # before any check could run (the model could not be found)
            traceback.print_exc(file=sys.stderr)
            out = {"checks": {}, "error": f"{type(exc).__name__}: {exc}"}
    checks = out["checks"]
    result = {**head, "ok": bool(checks) and "error" not in out and all(c["ok"] for c in checks.values()),
              "seconds": round(time.perf_counter() - t0, 1), **out}
    result["failed"] = [name for name, c in checks.items() if not c["ok"]]
    print(json.dumps(result, ensure_ascii=False), file=real_stdout)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
