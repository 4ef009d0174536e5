"""`python app.py train EXPORT --speaker NAME --persona NAME [--steps N] [--rank N] [--json]`.

The same pipeline as the UI: a TrainingService starts the worker process and this
command polls the store, printing progress (to stderr with --json); Ctrl-C cancels the
run (it can be resumed later). With --json the last line of stdout is one JSON object
with persona_id, adapter_dir, steps, train_loss, eval_loss_before and eval_loss_after.
"""

from __future__ import annotations

import json
import sys
import time


def _fmt_eta(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def train_command(args) -> int:
    from core.errors import NotFound
    from core.model_source import resolve_model
    from core.training.service import TrainingService
    from storage.store import Store

    out = sys.stderr if args.json else sys.stdout
    store = Store()
    source = resolve_model(getattr(args, "model", None), store.home, lambda m: print(m, file=sys.stderr, flush=True))
    svc = TrainingService(store, model=source)
    config = {}
    if getattr(args, "config", None):  # --config '{"batch_size": 4, ...}': any TrainConfig field
        try:
            config.update(json.loads(args.config))
        except json.JSONDecodeError as exc:
            print(f"error: --config is not valid JSON: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "steps", None):
        config["max_steps"] = args.steps
    if getattr(args, "rank", None):
        config["rank"] = args.rank
        config["alpha"] = 2 * args.rank  # keep the default alpha/r = 2
    for key in ("learning_rate", "batch_size", "max_seq_len"):
        if getattr(args, key, None):
            config[key] = getattr(args, key)
    persona_id = None
    try:
        persona_id = store.personas.find(args.persona)["id"]
    except NotFound:
        pass
    t0 = time.monotonic()
    run_id = svc.start(args.export, args.speaker, persona_name=args.persona, persona_id=persona_id, config=config, consent=True)
    target = f"the existing persona '{persona_id}' (a new adapter version)" if persona_id else f"a new persona '{args.persona}'"
    print(f"Training {args.speaker}'s voice into {target}; run {run_id}. Ctrl-C cancels.", file=out, flush=True)
    print("(You confirm that you may use this person's messages for training.)", file=out, flush=True)
    seen = {"stage": None, "step": -1}

    def show(st: dict) -> None:
        if st["stage"] != seen["stage"]:
            seen["stage"] = st["stage"]
            print(f"  {st['stage']}...", file=out, flush=True)
        if st["step"] != seen["step"] and st["loss"] is not None and st["state"] == "running":
            seen["step"] = st["step"]
            tok = f"{st['tokens_per_s']:.0f} tok/s" if st["tokens_per_s"] else ""
            print(
                f"  step {st['step']}/{st['total_steps']}  loss {st['loss']:.3f}  lr {st['learning_rate']:.1e}  {tok}  ETA {_fmt_eta(st['eta_s'])}",
                file=out,
                flush=True,
            )

    try:
        st = svc.wait(run_id, on_update=show)
    except KeyboardInterrupt:
        print("Cancelling after the current step...", file=sys.stderr, flush=True)
        svc.cancel(run_id)
        st = svc.wait(run_id)
        print(f"Cancelled; resume later from the last checkpoint (run {run_id}).", file=sys.stderr)
        return 130
    if st["state"] != "finished":
        print(f"error: training {st['state']}: {st['error'] or ''}", file=sys.stderr)
        return 1
    ev = st["evaluation"]
    adapter = store.adapters.get(st["adapter_id"])
    result = {
        "run_id": run_id,
        "persona_id": adapter["persona_id"],
        "adapter_dir": str(store.adapters.folder(adapter)),
        "adapter_version": adapter["version"],
        "steps": st["step"],
        "train_loss": (st["result"] or {}).get("train_loss"),
        "eval_loss_before": ev["before"]["loss"],
        "eval_loss_after": ev["after"]["loss"],
        "perplexity_before": ev["before"]["perplexity"],
        "perplexity_after": ev["after"]["perplexity"],
        "train_examples": (st["plan"] or {}).get("train_examples"),
        "heldout_examples": ev["after"]["examples"],
        "seconds": round(time.monotonic() - t0, 1),
        "samples": ev.get("samples", []),
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(
            f"Done in {result['seconds']:.0f} s: held-out loss {result['eval_loss_before']:.3f} -> {result['eval_loss_after']:.3f} "
            f"(perplexity {result['perplexity_before']:.1f} -> {result['perplexity_after']:.1f}).\n"
            f"Persona '{result['persona_id']}' now uses adapter v{result['adapter_version']} ({result['adapter_dir']})."
        )
        for s in result["samples"]:
            print(f"\n  > {s['prompt']}\n    real:    {s['real']}\n    base:    {s['base']}\n    adapter: {s['adapter']}")
    return 0
