"""`python app.py train ...`: start, follow, list, cancel and resume training runs.

    train EXPORT --speaker NAME --persona NAME [--steps N] [--rank N] [--json]
    train --runs [--json]          the runs, their state and progress
    train --attach RUN [--json]    follow a run until it ends (Ctrl-C leaves it running)
    train --cancel RUN [--json]    stop a run after its current step (it can be resumed)
    train --resume RUN [--json]    continue a failed or cancelled run from its checkpoint

The same pipeline as the UI: a TrainingService starts the worker process (which outlives
this terminal) and this command polls the store. Progress always goes to stderr; stdout
carries only the answer: the summary of a finished run, the table of runs, or with
--json one JSON object (a list for --runs). Running the same train command again
(same export, speaker and persona) while its run is going follows that run instead of
refusing. Ctrl-C while starting, resuming or re-following a run cancels it (it can be
resumed); Ctrl-C under --attach only stops watching.

Exit codes of the commands that follow a run: 0 finished, 1 failed, 3 cancelled,
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from core.errors import ChorusError

EXIT_FOR_STATE = {"finished": 0, "failed": 1, "cancelled": 3}
ACTIONS = ("runs", "attach", "cancel", "resume")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt_eta(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def check_args(args) -> str | None:
    """The one-line complaint about a `train` command line that cannot run, or None."""
    actions = [name for name in ACTIONS if getattr(args, name, None)]
    start = [label for label, value in (("EXPORT", getattr(args, "export", None)), ("--speaker", getattr(args, "speaker", None)),
                                        ("--persona", getattr(args, "persona", None))) if value]
    if len(actions) > 1:
        return f"train takes one of --runs, --attach, --cancel, --resume at a time (got --{' and --'.join(actions)})."
    if actions and start:
        return f"train --{actions[0]} takes no {', '.join(start)}; those start a new run."
    if not actions and len(start) < 3:
        return ("train needs EXPORT, --speaker and --persona to start a run "
                "(or one of --runs, --attach RUN, --cancel RUN, --resume RUN).")
    return None


def _service(store, args, *, for_start: bool):
    from core.model_source import ModelSource, resolve_model
    from core.training.service import TrainingService

    if for_start:  # a first launch converts the embedded model here: its steps go to stderr
        source = resolve_model(getattr(args, "model", None), store.home, _err)
    else:
        # Following, cancelling or resuming a run starts no new one: each run's request
        # already names its model, so this one is never read (and nothing is converted).
        source = ModelSource("unused", Path(store.home))
    return TrainingService(store, model=source)


def train_command(args) -> int:
    """`app.py train`: one of the actions above; ChorusError reaches app.py as one line."""
    from storage.store import Store

    problem = check_args(args)
    if problem:
        _err(f"error: {problem}")
        return 2
    store = Store()
    as_json = bool(getattr(args, "json", False))
    if getattr(args, "runs", False):
        return list_runs(_service(store, args, for_start=False), as_json)
    if getattr(args, "attach", None):
        svc = _service(store, args, for_start=False)
        return follow(svc, _active_run(svc, args.attach, "attach to"), as_json, cancel_on_interrupt=False)
    if getattr(args, "cancel", None):
        return cancel_run(_service(store, args, for_start=False), args.cancel, as_json)
    if getattr(args, "resume", None):
        svc = _service(store, args, for_start=False)
        if svc.status(args.resume, history=False)["state"] in ("queued", "running"):
            raise ChorusError(f"Run {args.resume} is still going; follow it with `app.py train --attach {args.resume}`.")
        st = svc.resume(args.resume)
        _err(f"Resuming run {st['id']} ({_who(st)}) from its last checkpoint. Ctrl-C cancels.")
        return follow(svc, st["id"], as_json, cancel_on_interrupt=True)
    return start_run(store, args, as_json)


# starting -----------------------------------------------------------------------------


def _config(args) -> dict:
    config = {}
    if getattr(args, "config", None):  # --config '{"batch_size": 4, ...}': any TrainConfig field
        try:
            config.update(json.loads(args.config))
        except json.JSONDecodeError as exc:
            raise ChorusError(f"--config is not valid JSON: {exc}") from None
    if getattr(args, "steps", None):
        config["max_steps"] = args.steps
    if getattr(args, "rank", None):
        config["rank"] = args.rank
        config["alpha"] = 2 * args.rank  # keep the default alpha/r = 2
    for key in ("learning_rate", "batch_size", "max_seq_len"):
        if getattr(args, key, None):
            config[key] = getattr(args, key)
    if getattr(args, "keep", None):
        config["keep_labels"] = list(config.get("keep_labels", [])) + list(args.keep)
    return config


def _same_request(st: dict, export: str, speaker: str, persona: str, persona_id: str | None) -> bool:
    """Is the active run `st` what this command line asks for (same export file name,
    speaker and persona)? Names compare case-blind, as `inspect` and `find` do."""
    fold = str.casefold
    same_persona = (persona_id is not None and st["persona_id"] == persona_id) or fold(st["persona_name"] or "") == fold(persona)
    return st["export_name"] == Path(export).name and fold(st["speaker"]) == fold(speaker) and same_persona


def start_run(store, args, as_json: bool) -> int:
    from core.errors import NotFound
    from core.training.service import TrainingBusy
    from storage.training_runs import ACTIVE

    config = _config(args)
    persona_id = None
    try:
        persona_id = store.personas.find(args.persona)["id"]
    except NotFound:
        pass
    svc = _service(store, args, for_start=True)

    def same(st: dict) -> bool:
        return st["state"] in ACTIVE and _same_request(st, args.export, args.speaker, args.persona, persona_id)

    def attach(st: dict) -> int:
        _err(f"This training is already going as run {st['id']} (step {st['step']}/{st['total_steps'] or '?'}); "
             "following it. Ctrl-C cancels.")
        return follow(svc, st["id"], as_json, cancel_on_interrupt=True)

    active = [st for st in svc.runs() if st["state"] in ACTIVE]
    for st in active:
        if same(st):
            return attach(st)
    try:
        run_id = svc.start(args.export, args.speaker, persona_name=args.persona, persona_id=persona_id, config=config, consent=True)
    except TrainingBusy as exc:  # another request's run is going, or this one started meanwhile elsewhere
        busy = getattr(exc, "run_id", None) or (active[0]["id"] if active else None)
        if busy and same(svc.status(busy, history=False)):
            return attach(svc.status(busy, history=False))
        hint = f" Follow it with `app.py train --attach {busy}` or stop it with `app.py train --cancel {busy}`." if busy else ""
        raise ChorusError(f"{exc}{hint}") from None
    target = f"the existing persona '{persona_id}' (a new adapter version)" if persona_id else f"a new persona '{args.persona}'"
    for warning in svc.status(run_id, history=False)["warnings"]:
        _err(f"warning: {warning}")
    _err(f"Training {args.speaker}'s voice into {target}; run {run_id}. Ctrl-C cancels.")
    _err("(You confirm that you may use this person's messages for training.)")
    return follow(svc, run_id, as_json, cancel_on_interrupt=True)


# following ------------------------------------------------------------------------------


def _who(st: dict) -> str:
    return f"{st['speaker']} -> {st['persona_name'] or st['persona_id'] or '?'}"


def _active_run(svc, run_id: str, what: str) -> str:
    from storage.training_runs import ACTIVE

    st = svc.status(run_id, history=False)
    if st["state"] not in ACTIVE and st["state"] != "finished":
        hint = f" Resume it with `app.py train --resume {run_id}`." if st["resumable"] else ""
        raise ChorusError(f"Run {run_id} is {st['state']}; there is nothing to {what}.{hint}")
    return run_id


def _progress_printer():
    """An on_update callback that prints each new stage and each new step to stderr."""
    seen = {"stage": None, "step": -1}

    def show(st: dict) -> None:
        if st["stage"] != seen["stage"]:
            seen["stage"] = st["stage"]
            _err(f"  {st['stage'] or st['state']}...")
        if st["step"] != seen["step"] and st["loss"] is not None and st["state"] == "running":
            seen["step"] = st["step"]
            tok = f"{st['tokens_per_s']:.0f} tok/s" if st["tokens_per_s"] else ""
            _err(f"  step {st['step']}/{st['total_steps']}  loss {st['loss']:.3f}  lr {st['learning_rate']:.1e}  {tok}  "
                 f"ETA {_fmt_eta(st['eta_s'])}")

    return show


def follow(svc, run_id: str, as_json: bool, *, cancel_on_interrupt: bool) -> int:
    """Show the run's progress (stderr) until it ends, then its result (stdout)."""
    try:
        st = svc.wait(run_id, on_update=_progress_printer())
    except KeyboardInterrupt:
        if not cancel_on_interrupt:
            _err(f"Stopped watching; run {run_id} goes on. Follow it again with `app.py train --attach {run_id}`.")
            return 130
        _err("Cancelling after the current step...")
        svc.cancel(run_id)
        svc.wait(run_id)
        _err(f"Cancelled; resume later from the last checkpoint with `app.py train --resume {run_id}`.")
        return 130
    if st["state"] != "finished":
        if as_json:
            print(json.dumps(_public(st), ensure_ascii=False))
        reason = f": {st['error']}" if st["error"] else ""
        resume = f" Resume it with `app.py train --resume {run_id}`." if st["resumable"] else ""
        _err(f"error: training {st['state']}{reason}{resume}")
        return EXIT_FOR_STATE.get(st["state"], 1)
    print_result(svc.store, st, as_json)
    return 0


def _seconds(st: dict) -> float | None:
    from datetime import datetime

    try:
        return round((datetime.fromisoformat(st["updated"]) - datetime.fromisoformat(st["created"])).total_seconds(), 1)
    except (TypeError, ValueError):
        return None


def print_result(store, st: dict, as_json: bool) -> None:
    """The answer for a finished run: one JSON object, or a short summary with samples."""
    ev = st["evaluation"]
    adapter = store.adapters.get(st["adapter_id"])
    result = {
        "run_id": st["id"],
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
        "seconds": _seconds(st),  # from the run's creation to its end, pauses included
        "train_seconds": (st["result"] or {}).get("train_seconds"),  # the training steps alone
        # the step whose weights were published: the best held-out loss, not always the last step
        "kept_step": ev.get("kept_step", st["step"]),
        **_voice_keys(ev.get("voice") or {}),
        "samples": ev.get("samples", []),
    }
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    took = f" in {result['seconds']:.0f} s" if result["seconds"] is not None else ""
    kept = "" if result["kept_step"] == result["steps"] else (
        f"\nKept step {result['kept_step']} of {result['steps']}: its held-out loss was the lowest (later steps overfit).")
    print(
        f"Done{took}: held-out loss {result['eval_loss_before']:.3f} -> {result['eval_loss_after']:.3f} "
        f"(perplexity {result['perplexity_before']:.1f} -> {result['perplexity_after']:.1f}).{kept}\n"
        f"{(ev.get('voice') or {}).get('summary') or 'Voice match: not measured.'}\n"
        f"Persona '{result['persona_id']}' now uses adapter v{result['adapter_version']} ({result['adapter_dir']})."
    )
    for s in result["samples"]:
        print(f"\n  > {s['prompt']}\n    real:    {s['real']}\n    base:    {s['base']}\n    adapter: {s['adapter']}")


def _voice_keys(voice: dict) -> dict:
    """The voice match for --json: the three shares with their 95% intervals, or nulls and
    the reason when the run could not judge it (core/training/voice.py)."""
    out = {}
    for name in ("base", "adapter", "real"):
        out[f"voice_match_{name}"] = voice.get(f"voice_match_{name}")
        out[f"voice_match_{name}_ci"] = voice.get(f"voice_match_{name}_ci")
    out["voice_match_k"] = voice.get("k") or 0
    # what the measure added to the run: generating the replies, fitting and scoring
    out["voice_match_seconds"] = round(sum((voice.get("seconds") or {}).values()), 1) if voice.get("judged") else None
    out["voice_match_reason"] = None if voice.get("judged") else (voice.get("reason") or "not measured")
    return out


# listing and cancelling -------------------------------------------------------------------

_PUBLIC = ("id", "state", "stage", "speaker", "export_name", "persona_id", "persona_name", "step", "total_steps",
           "fraction", "loss", "tokens_per_s", "eta_s", "error", "adapter_id", "resumable", "created", "updated")


def _public(st: dict) -> dict:
    """What --json shows of a run: where it stands, not the whole plan and config."""
    return {key: st.get(key) for key in _PUBLIC}


def list_runs(svc, as_json: bool) -> int:
    runs = svc.runs()
    if as_json:
        print(json.dumps([_public(st) for st in runs], ensure_ascii=False, indent=2))
        return 0
    if not runs:
        _err("No training runs yet. Start one with `app.py train EXPORT --speaker NAME --persona NAME`.")
        return 0
    rows = [("RUN", "STATE", "PROGRESS", "LOSS", "ETA", "SPEAKER -> PERSONA", "STARTED")]
    for st in runs:
        total = st["total_steps"] or "?"
        rows.append((
            st["id"],
            st["state"] + ("*" if st["resumable"] else ""),
            f"{st['step']}/{total} ({st['fraction']:.0%})" if st["total_steps"] else f"{st['step']}/?",
            f"{st['loss']:.3f}" if st["loss"] is not None else "-",
            _fmt_eta(st["eta_s"]) if st["eta_s"] is not None else "-",
            _who(st),
            (st["created"] or "")[:16].replace("T", " "),
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    if any(st["resumable"] for st in runs):
        _err("* resumable: `app.py train --resume RUN`")
    return 0


def cancel_run(svc, run_id: str, as_json: bool) -> int:
    from storage.training_runs import ACTIVE

    st = svc.status(run_id, history=False)
    if st["state"] not in ACTIVE:
        raise ChorusError(f"Run {run_id} is {st['state']}; only a queued or running run can be cancelled.")
    svc.cancel(run_id)
    _err(f"Cancelling run {run_id} after its current step...")
    try:
        st = svc.wait(run_id)
    except KeyboardInterrupt:
        _err(f"Stopped waiting; run {run_id} stops after its current step.")
        return 130
    if as_json:
        print(json.dumps(_public(st), ensure_ascii=False))
    elif st["state"] == "cancelled":
        print(f"Cancelled run {run_id} at step {st['step']}/{st['total_steps'] or '?'}; "
              f"resume it with `app.py train --resume {run_id}`.")
    else:  # it ended another way before the cancel took effect
        print(f"Run {run_id} {st['state']} before the cancel took effect.")
    return 0 if st["state"] == "cancelled" else EXIT_FOR_STATE.get(st["state"], 1)
