"""The training process: `python -m core.training.worker RUN_ID`.

Reads the run from the store, trains, evaluates, writes the adapter and registers it;
the serving process only starts it and reads the store. Steps, in order:

1. claim the run (queued -> running, with this pid), lower this process's priority; a
   run whose adapter an earlier attempt already registered just finishes;
2. load the export copied into the run folder, build the speaker's examples with
   core.chatimport, render them behind the persona card's system prompt (fixed at the
   first start and reused on resume, so "before" and "after" use the same prompt);
3. load the base in NF4, guarded against the CPU trap (qlora.py), add LoRA;
4. held-out loss before (base + card; on resume, the one already measured);
5. Trainer from the last complete checkpoint, if any (progress rows as it goes);
6. the best step kept: if an earlier held-out evaluation beat the last step (later steps
   overfit), its LoRA weights replace the last ones (trainer.best_record); held-out loss
   after, then the voice match (voice.py): K held-out contexts answered by base + card
   and by the adapter in one batched, same-seed call, scored by an authorship classifier
   fitted on the training split; those replies are also the samples shown and the pairs
   of the blind comparison;
7. the adapter folder (peft's two files, training_config.json, training_log.jsonl,
   evaluation.json, chorus_adapter.json) is written to a temp folder in the run folder,
   checked like any uploaded adapter, and registered with store.adapters.add_version in
   the same transaction that marks the run finished with that adapter (a kill leaves
   both or neither); checkpoints are deleted last.

A cancel (status `cancelling`) is honoured at every stage: at each stage's start, after
every training step, and in the transaction that would register the adapter. The run
becomes `cancelled` with its checkpoints kept, so it can be resumed, and writes no
adapter. Any error marks the run `failed` with a message for the user; a kill leaves it
`running` with a dead pid, which the service notices (service.reconcile). Nothing
half-written is ever registered.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from functools import partial
from pathlib import Path

from core.errors import ChorusError, ExportInvalid
from core.training.memory import peak_rss_mb
from storage.store import Store

MIN_EXAMPLES = 4  # fewer training examples than this cannot show a voice


def run_folder(home: Path, run_id: str) -> Path:
    return Path(home) / "training" / run_id


class _Log:
    """training_log.jsonl in the run folder: one JSON object per progress event."""

    def __init__(self, path: Path):
        self.path = path

    def keep_upto(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**row, "time": time.time()}) + "\n")


class Cancelled(Exception):
    """The user cancelled the run; raised at the next stage boundary or step."""


def _cancelling(store: Store, run_id: str) -> bool:
    return store.training.get(run_id)["status"] == "cancelling"


def _stage(store: Store, run_id: str, stage: str) -> None:
    """Enter a stage: show it, and honour a cancel that came during the last one."""
    from core.training.runner import hold_point

    store.training.update(run_id, config={"stage": stage})
    # the peak so far, in the log: which stage sets a run's peak memory
    print(f"[{run_id}] {stage} (peak RSS so far {peak_rss_mb():.0f} MB)", flush=True)
    hold_point(stage, lambda: _cancelling(store, run_id))
    if _cancelling(store, run_id):
        raise Cancelled()


def _mark_cancelled(store: Store, run_id: str) -> str:
    shutil.rmtree(run_folder(store.home, run_id) / "adapter.tmp", ignore_errors=True)  # no adapter from a cancelled run
    store.training.set_status_if(run_id, ("cancelling",), "cancelled", pid=None)
    store.training.update(run_id, config={"stage": "cancelled"})
    print(f"[{run_id}] cancelled", flush=True)
    return "cancelled"


def run(store: Store, run_id: str) -> str:
    """Run (or resume) `run_id` to the end; returns the final status."""
    runs = store.training
    if not runs.set_status_if(run_id, ("queued",), "running", pid=os.getpid(), error=None):
        row = runs.get(run_id)
        if row["status"] in ("cancelling", "cancelled"):  # cancelled before this process claimed it
            runs.set_status_if(run_id, ("cancelling",), "cancelled", pid=None)
            return "cancelled"
        raise ChorusError(f"The training run {run_id} is {row['status']}, not queued; nothing to do.")
    try:
        status = _pipeline(store, run_id)
    except Cancelled:
        return _mark_cancelled(store, run_id)
    except BaseException as exc:  # recorded for the user, then re-raised for the log
        if isinstance(exc, ChorusError):
            message = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            message = "Interrupted."
        else:
            message = f"Training failed: {type(exc).__name__}: {exc}"
        runs.update(run_id, status="failed", error=message, pid=None)
        raise
    return status


def _pipeline(store: Store, run_id: str) -> str:
    import torch

    from core.adapters import check_compatible, inspect_adapter, module_shapes
    from core.chatimport import build_examples, load_export
    from core.model_source import ModelSource
    from core.prompting import system_prompt
    from core.training.config import TrainConfig, plan
    from core.training.dataset import encode_all, lengths
    from core.training.evaluate import heldout_loss, sample_prompts, sample_replies
    from core.training.qlora import add_lora, load_for_training
    from core.training.runner import fault_point, hold_point
    from core.training.trainer import fit, latest_checkpoint, restore_best
    from core.training.voice import measure_voice
    from storage.adapter_files import META

    runs = store.training
    row = runs.get(run_id)
    spec = row["config"]
    folder = run_folder(store.home, run_id)
    registered = _registered_for(store, row)
    if registered is not None:  # an earlier attempt registered it and was killed before finishing
        return _finish(store, run_id, registered)
    cfg = TrainConfig.from_dict(spec["train"])
    try:
        os.nice(cfg.nice)
    except OSError:
        pass
    log = _Log(folder / "training_log.jsonl")
    persona = dict(spec["persona"])
    if row["persona_id"]:
        persona = store.personas.get(row["persona_id"])  # its name now; its prompt is fixed below

    _stage(store, run_id, "loading the model")
    source = ModelSource(spec["model"]["name"], Path(spec["model"]["path"]))
    model, tokenizer, info = load_for_training(source)
    base_shapes = module_shapes(model)

    _stage(store, run_id, "preparing the examples")
    export = load_export(folder / spec["export_file"], keep=cfg.keep_labels)
    examples = build_examples(
        export,
        row["speaker"],
        scrub=cfg.scrub,
        max_turns=cfg.max_turns,
        val_fraction=cfg.val_fraction,
        count_tokens=lambda s: len(tokenizer.encode(s, add_special_tokens=False)),
    )
    if len(examples.train) < MIN_EXAMPLES or not examples.validation:
        raise ExportInvalid(
            f"{row['speaker']} has only {len(examples.train) + len(examples.validation)} replies to learn from "
            f"in this export; training needs at least {MIN_EXAMPLES + 1}. Use a longer export."
        )
    # The prompt "loss before" was measured with: a card edited between a kill and a
    # resume must not change what "after" is compared against.
    system = spec.get("system_prompt") or system_prompt(persona)
    device = info.device
    p = plan(cfg, len(examples.train), len(examples.validation), lengths(tokenizer, system, examples.train), device, model.config)
    train = encode_all(tokenizer, system, examples.train, p.max_seq_len)
    held = encode_all(tokenizer, system, examples.validation[-p.eval_examples :], p.max_seq_len)
    data = {**examples.report, "truncated": train.truncated, "reply_cut": train.reply_cut, "dropped_too_long": train.dropped,
            "train_label_tokens": train.label_tokens, "heldout_label_tokens": held.label_tokens}
    runs.update(run_id, total_steps=p.steps, config={"plan": p.as_dict(), "data": data, "system_prompt": system})
    frozen = {**persona, "system_prompt": system, "description": "", "personality": "", "scenario": "", "example_dialogue": ""}

    torch.manual_seed(cfg.seed)
    model = add_lora(model, cfg, gradient_checkpointing=p.gradient_checkpointing)
    # What the adapter really targets (the model's own layer names: Phi-3's qkv_proj, ...), for its README and config.
    cfg.target_modules = sorted(model.peft_config["default"].target_modules)
    pad = tokenizer.pad_token_id
    evaluation = runs.get(run_id)["evaluation"]
    if "before" not in evaluation:
        _stage(store, run_id, "measuring the held-out loss before training")
        before = heldout_loss(model, held.items, pad, adapter=False, batch_size=p.micro_batch_size)
        runs.update(run_id, evaluation={"before": before})
        runs.add_progress(run_id, {"step": 0, "eval_loss": before["loss"]})
        log.write({"event": "eval", "step": 0, "eval_loss": before["loss"], "adapter": False})
    before = runs.get(run_id)["evaluation"]["before"]

    checkpoint = latest_checkpoint(folder / "checkpoints")
    resumed_at = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    runs.drop_progress_after(run_id, resumed_at)
    log.keep_upto(resumed_at)
    runs.update(run_id, step=resumed_at, config={"resumed_from": resumed_at or None})

    def report(r: dict) -> None:
        log.write(r)
        if r["event"] in ("train", "eval"):
            runs.add_progress(run_id, r)
        live = {k: r[k] for k in ("loss", "learning_rate", "tokens_per_s", "s_per_step", "eta_s", "grad_norm") if k in r}
        runs.update(run_id, step=r["step"], config={"live": live} if live else {})

    def should_stop() -> bool:
        return runs.get(run_id)["status"] == "cancelling"

    _stage(store, run_id, "training")
    t_train = time.perf_counter()
    out = fit(model, tokenizer, train.items, held.items, p, cfg, folder, report=report, should_stop=should_stop, checkpoint=checkpoint)
    train_s = time.perf_counter() - t_train
    if out["stopped"]:
        runs.update(run_id, step=out["step"])
        raise Cancelled()

    _stage(store, run_id, "measuring the held-out loss after training")
    after = heldout_loss(model, held.items, pad, adapter=True, batch_size=p.micro_batch_size)
    last = {"step": out["step"], "eval_loss": after["loss"]}
    best = out.get("best")
    kept = last
    if best and best["step"] != out["step"] and after["loss"] is not None and best["eval_loss"] < after["loss"]:
        # Later steps overfit: publish the best evaluated step, and measure what is published.
        restore_best(model, folder)
        after = heldout_loss(model, held.items, pad, adapter=True, batch_size=p.micro_batch_size)
        kept = {"step": best["step"], "eval_loss": after["loss"]}
    reply = partial(sample_replies, model, tokenizer, frozen, seed=cfg.seed, max_new_tokens=cfg.sample_max_new_tokens,
                    budget=p.max_seq_len)  # contexts as long as the training examples
    voice = None
    if cfg.voice_k:
        _stage(store, run_id, "measuring the voice match")
        voice = measure_voice(examples, reply, k=cfg.voice_k)
    samples = (voice.rows if voice else [])[: cfg.samples]
    if cfg.samples and not samples:  # no voice measure (off, or too little data): a few samples still
        _stage(store, run_id, "writing sample replies")
        samples = reply(sample_prompts(examples.validation, cfg.samples))
    evaluation = {
        "before": before,
        "after": after,
        "loss_ratio": round(after["loss"] / before["loss"], 3) if before["loss"] else None,
        "samples": samples,
        "heldout": "the most recent examples of the export, never trained on",
        "heldout_honesty": examples.report["held_out_honesty"],  # duplicates and trained-on replies taken out
        "kept_step": kept["step"],
        "best": {"kept": kept, "last": last, "overfit": kept["step"] != last["step"]},
        "voice": voice.as_dict() if voice else {"judged": False, "reason": "the voice measure is off (voice_k = 0)"},
    }

    _stage(store, run_id, "saving the adapter")
    tmp = folder / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    full_config = {
        "config": cfg.as_dict(),
        "plan": p.as_dict(),
        "run_id": run_id,
        "speaker": row["speaker"],
        "export": {"name": row["export_name"], "format": export.format},
        "data": data,
        "persona": {k: persona.get(k) for k in ("name", "description", "personality", "scenario", "greeting")},
        "system_prompt": system,
        "result": {
            **{k: out[k] for k in ("step", "train_loss", "resumed_from")},
            "kept_step": kept["step"],
            "train_seconds": round(train_s, 1),
            "peak_rss_mb": peak_rss_mb(),
        },
    }
    (tmp / "training_config.json").write_text(json.dumps(full_config, indent=2, ensure_ascii=False), encoding="utf-8")
    (tmp / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(log.path, tmp / "training_log.jsonl")
    meta = {
        "base_model": info.name,
        "base_fingerprint": info.fingerprint,
        "architecture": info.architecture,
        "vocab_size": info.vocab_size,
        "trained_by": "chorus",
        "run_id": run_id,
    }
    (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (tmp / "README.md").write_text(_readme(persona, row, info, cfg, p, out, evaluation), encoding="utf-8")  # replaces peft's stub
    adapter = inspect_adapter(tmp)
    check_compatible(adapter, base_shapes, info)  # the same check an upload gets
    fault_point("adapter")  # the adapter is complete in the run folder, not yet registered

    hold_point("publishing", lambda: _cancelling(store, run_id))
    store_meta = {**adapter.store_meta(), "base_model": info.name, "base_fingerprint": info.fingerprint}
    # One transaction: the last cancel check, the new persona, the adapter version and the
    # run marked finished with it. A kill anywhere in it leaves none of them; a cancel
    # that comes after it is too late (the run is finished). It holds the database's
    # write lock while add_version copies a few MB of adapter: other writers wait.
    with store.handle.immediate():
        now_row = runs.get(run_id)
        if now_row["status"] != "running":
            raise Cancelled()
        persona_id = now_row["persona_id"]
        if not persona_id:
            card = {k: v for k, v in spec["persona"].items() if v not in (None, "")}
            persona_id = store.personas.create(card, source="trained")["id"]
            runs.update(run_id, persona_id=persona_id)
            fault_point("register")  # the persona exists, its adapter is not registered yet
        registered = store.adapters.add_version(persona_id, tmp, store_meta)
        fault_point("registered")  # the version is in place, the run not yet marked finished
        runs.update(
            run_id,
            status="finished",
            pid=None,
            step=out["step"],
            adapter_id=registered["id"],
            evaluation=evaluation,
            config={"stage": "finished", "result": full_config["result"]},
        )
    fault_point("finished")  # finished and registered; checkpoints not yet deleted
    tidy(folder)
    print(f"[{run_id}] finished: held-out loss {before['loss']} -> {after['loss']}", flush=True)
    return "finished"


def tidy(folder: Path) -> None:
    """Remove what a finished run no longer needs: its checkpoints and the temp adapter."""
    shutil.rmtree(folder / "adapter.tmp", ignore_errors=True)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the adapter is the result now
    shutil.rmtree(folder / "best", ignore_errors=True)
    shutil.rmtree(folder / "best.tmp", ignore_errors=True)


def _registered_for(store: Store, row: dict) -> dict | None:
    """The adapter version an earlier attempt of this run registered, if any: its
    chorus_adapter.json names the run. (Since registration and finishing share one
    transaction this finds only runs left by older versions of Chorus.)"""
    from storage.adapter_files import META

    if not row["persona_id"]:
        return None
    try:
        versions = store.adapters.versions(row["persona_id"])
    except ChorusError:
        return None
    for version in reversed(versions):
        try:
            meta = json.loads((store.adapters.folder(version) / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("run_id") == row["id"]:
            return version
    return None


def _finish(store: Store, run_id: str, registered: dict) -> str:
    """Mark the run finished with an adapter already registered for it; nothing is trained."""
    adapter_dir = store.adapters.folder(registered)

    def read(name: str) -> dict:
        try:
            value = json.loads((adapter_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    result = read("training_config.json").get("result") or {}
    fields = {"config": {"stage": "finished", "result": result}, "evaluation": read("evaluation.json")}
    store.training.update(run_id, status="finished", pid=None, adapter_id=registered["id"],
                          **({"step": result["step"]} if result.get("step") else {}), **fields)
    tidy(run_folder(store.home, run_id))
    print(f"[{run_id}] finished: its adapter (version {registered['version']}) was already registered", flush=True)
    return "finished"


def _readme(persona, row, info, cfg, p, out, evaluation) -> str:
    b, a = evaluation["before"], evaluation["after"]
    return (
        f"# {persona.get('name') or row['speaker']}: a Chorus persona adapter\n\n"
        f"LoRA (r={cfg.rank}, alpha={cfg.alpha:g}, {', '.join(cfg.target_modules)}) for {info.name} "
        f"(fingerprint {info.fingerprint}), trained by Chorus on the replies of '{row['speaker']}' in "
        f"'{row['export_name']}': {out['step']} steps of {p.batch_size} examples, learning rate {p.learning_rate:g}"
        + (f"; these are the weights of step {evaluation['kept_step']}, whose held-out loss was the lowest (later steps overfit)"
           if evaluation["kept_step"] != out["step"] else "") + ".\n\n"
        f"Held-out loss of the speaker's replies (the most recent {a['examples']} examples, never trained on): "
        f"{b['loss']} (perplexity {b['perplexity']}) with the persona card alone, {a['loss']} (perplexity {a['perplexity']}) "
        f"with this adapter.\n\n{evaluation['voice'].get('summary') or ''}\n\nFiles: training_config.json (settings and data), training_log.jsonl (progress), "
        f"evaluation.json (losses and sample replies), chorus_adapter.json (base model).\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m core.training.worker RUN_ID", file=sys.stderr)
        return 2
    from core.logs import quiet_libraries
    from core.training import memory

    memory.reset_peak()
    if os.environ.get("CHORUS_MMAP_THRESHOLD") != "off":
        memory.return_large_frees_at_once(int(os.environ.get("CHORUS_MMAP_THRESHOLD") or memory.MMAP_THRESHOLD))
    quiet_libraries()
    store = Store()
    try:
        status = run(store, argv[0])
    except ChorusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    print(f"status: {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
