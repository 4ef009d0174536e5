"""TrainingService: what the UI and the command line call to train a persona.

    svc = TrainingService(store, engine)            # engine: the serving one, or None
    info = svc.inspect(export_path)                 # format, speakers, suggested cards
    run_id = svc.start(export_path, speaker, persona_name="Mara", consent=True, config={...})
    svc.status(run_id)                              # poll: state, step/total, losses, ETA...
    svc.cancel(run_id); svc.resume(run_id); svc.runs()
    svc.blind(run_id); svc.blind_pick(run_id, pair, "a")  # the blind comparison after a run
    svc.poll()                                      # call every few seconds from the app

Training runs in a subprocess (core.training.worker); this object only writes the run
request, starts the process, reads the store, notices dead workers, and hot-loads a
finished run's adapter into the running engine (`poll`). One run at a time: on two
shared CPU cores a second run would only slow both. The check and the new run's row are
one transaction (storage.training_runs), and the row records this process as its owner,
so a run whose export is still being copied is not taken for a dead one.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

from core.errors import ChorusError, ExportInvalid
from core.model_source import ModelSource
from core.training.config import TrainConfig
from core.training.runner import owner_alive, spawn_worker, tail, worker_alive
from core.training.worker import MIN_EXAMPLES, run_folder, tidy
from storage.db import save_failed
from storage.store import Store
from storage.training_runs import ACTIVE, RunActive

MAX_EXPORT_BYTES = 2 * 1024**3
# Fewer of the speaker's messages than this (the threshold): a few dozen training
# examples, from which an adapter picks up topics more than a style; the user is told
# before the run starts, and the run keeps the warning.
THIN_VOICE = 200
CARD_KEYS = ("name", "tagline", "description", "personality", "scenario", "greeting", "example_dialogue", "system_prompt")


class TrainingBusy(ChorusError):
    """Another training run is still going; `run_id` names it."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


class TrainingService:
    def __init__(self, store: Store, engine=None, *, model: ModelSource | None = None, python: str | None = None):
        if model is None and engine is None:
            raise ValueError("TrainingService needs the serving engine or a model source")
        self.store = store
        self.engine = engine
        self.model = model or ModelSource(engine.info.name, Path(engine.info.path))
        self.python = python
        self._procs: dict[str, object] = {}  # run id -> Popen started by this process
        self._loaded: set[str] = set()  # finished runs whose adapter this process has hot-loaded
        self._lock = threading.Lock()

    def serve_on(self, engine) -> None:
        """Hot-load into `engine` from now on, and train new runs on its model (a model
        switch); runs already going keep theirs, and this service keeps its workers."""
        self.engine = engine
        self.model = ModelSource(engine.info.name, Path(engine.info.path))

    # before a run ------------------------------------------------------------

    def inspect(self, export_path: Path, progress=None) -> dict:
        return inspect_export(export_path, progress)

    # after a run: the blind comparison ----------------------------------------------

    def blind(self, run_id: str) -> dict:
        """The blind "which sounds like them?" comparison of a finished run (core/training/blind.py)."""
        from core.training.blind import blind_state

        row = self.store.training.get(run_id)
        if row["status"] != "finished":
            raise ChorusError("The blind comparison opens when the run has finished.")
        return blind_state(run_id, row["evaluation"], self.store.voice_picks.of_run(run_id))

    def blind_pick(self, run_id: str, pair: int, side: str) -> dict:
        """Record the user's pick for `pair` ("a", "b" as shown, or "neither"); returns `blind`."""
        from core.training.blind import SIDES, pick_for

        state = self.blind(run_id)
        if side not in SIDES:
            raise ChorusError(f"Pick one of {', '.join(SIDES)}, not {side!r}.")
        if not 0 <= int(pair) < state["total"]:
            raise ChorusError(f"This run has no pair {pair} to compare.")
        self.store.voice_picks.record(run_id, int(pair), pick_for(run_id, int(pair), side))
        return self.blind(run_id)

    def start(
        self,
        export_path: Path,
        speaker: str,
        *,
        persona_name: str | None = None,
        persona_id: str | None = None,
        card: dict | None = None,
        config: TrainConfig | dict | None = None,
        consent: bool = False,
    ) -> str:
        """Check the request, copy the export into the run folder and start the worker.

        The adapter goes to `persona_id` (an existing persona, whose old adapter versions
        are kept) or to a new persona made from `card` / `persona_name` when the run
        finishes. `consent`: the user confirmed they may use this person's messages.
        """
        from core.chatimport import build_examples, load_export
        from core.chatimport.examples import resolve_speaker

        if not consent:
            raise ChorusError("Confirm that you may use the messages of the person whose voice is learned.")
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        export_path = Path(export_path)
        if not export_path.is_file():
            raise ChorusError(f"The export {export_path} does not exist.")
        if export_path.stat().st_size > MAX_EXPORT_BYTES:
            raise ChorusError("The export is larger than 2 GB; export a shorter period.")
        self._check_idle()
        result = load_export(export_path, keep=cfg.keep_labels)
        speaker = resolve_speaker(result, speaker)
        examples = build_examples(result, speaker, scrub=cfg.scrub, max_turns=cfg.max_turns, val_fraction=cfg.val_fraction)
        repeats = examples.report["held_out_honesty"]["validation_examples_removed"]
        if len(examples.train) >= MIN_EXAMPLES and not examples.validation and repeats:
            raise ExportInvalid(
                f"Every one of {speaker}'s {repeats} most recent replies also appears earlier in this export, so "
                "no held-out reply is left to show what the adapter learned (it would measure memory, not voice). "
                "Use an export where the replies do not repeat."
            )
        if len(examples.train) < MIN_EXAMPLES or not examples.validation:
            raise ExportInvalid(
                f"{speaker} has only {len(examples.train) + len(examples.validation)} replies to learn from in this export; "
                f"training needs at least {MIN_EXAMPLES + 1}. Use a longer export."
            )
        thin = thin_voice(speaker, result.speakers.get(speaker, 0))
        if persona_id:
            self.store.personas.get(persona_id)
            persona = {}
        else:
            persona = {k: v for k, v in (card or {}).items() if k in CARD_KEYS and v not in (None, "")}
            persona["name"] = (persona_name or persona.get("name") or speaker).strip()
        request = {
            "train": cfg.as_dict(),
            "persona": persona,
            "model": {"name": self.model.name, "path": str(self.model.path)},
            "export_file": "export" + "".join(export_path.suffixes[-2:])[:16],
            "stage": "queued",
            "warnings": [thin] if thin else [],  # said before the run starts (page, CLI), kept with it
        }
        self._check_idle()  # again: loading the export took time
        try:
            row = self.store.training.create(speaker=speaker, export_name=export_path.name, config=request, persona_id=persona_id)
        except RunActive as exc:
            raise TrainingBusy(str(exc), exc.row["id"]) from None
        run_id = row["id"]
        folder = run_folder(self.store.home, run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(export_path, folder / request["export_file"])
            if self.store.training.get(run_id)["status"] == "queued":
                self._spawn(run_id)
            else:  # cancelled while the export was copied
                self.store.training.set_status_if(run_id, ("cancelling",), "cancelled", pid=None)
        except BaseException as exc:
            # Never started: leave nothing behind (a full disk, an interrupt).
            self.store.training.delete(run_id)
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, OSError):
                raise save_failed("a copy of the export for training", exc) from None
            raise
        return run_id

    def _check_idle(self) -> None:
        """Mark dead runs failed, then refuse if one is still going (early, for a clear
        answer before the export is read; `create` checks again atomically)."""
        for row in self.store.training.active():
            self._reconcile(row)
        busy = self.store.training.active()
        if busy:
            raise TrainingBusy(str(RunActive(busy[0])), busy[0]["id"])

    def _spawn(self, run_id: str) -> None:
        proc = spawn_worker(run_id, self.store.home, run_folder(self.store.home, run_id), self.python)
        with self._lock:
            self._procs[run_id] = proc
        # The worker claims the run with its own pid; until then record the child's.
        self.store.training.set_status_if(run_id, ("queued", "cancelling"), "queued", pid=proc.pid)

    # while it runs ---------------------------------------------------------------

    def _alive(self, row: dict) -> bool:
        proc = self._procs.get(row["id"])
        if proc is not None:
            return proc.poll() is None
        if row["pid"]:
            return worker_alive(row["pid"], row["id"])
        return owner_alive(row)  # no worker yet: alive while the process starting it is

    def _reconcile(self, row: dict) -> dict:
        """An active run whose worker is gone was killed or crashed: mark it failed (resumable)."""
        if row["status"] not in ACTIVE or self._alive(row):
            return row
        fresh = self.store.training.get(row["id"])  # the worker may have just finished, or just been started
        if fresh["status"] not in ACTIVE or self._alive(fresh):
            return fresh
        if fresh["status"] == "cancelling":
            self.store.training.set_status_if(row["id"], ("cancelling",), "cancelled", pid=None)
        else:
            log = tail(run_folder(self.store.home, row["id"]) / "worker.log", 5)
            detail = f" Last output: {log.splitlines()[-1][:300]}" if log.strip() else ""
            self.store.training.set_status_if(
                row["id"], ("queued", "running"), "failed", pid=None,
                error=f"The training process stopped unexpectedly (killed or crashed); resume continues from the last checkpoint.{detail}",
            )
        return self.store.training.get(row["id"])

    def status(self, run_id: str, *, history: bool = True) -> dict:
        """Everything the UI shows about one run (see the keys below)."""
        row = self._reconcile(self.store.training.get(run_id))
        cfg = row["config"]
        live = cfg.get("live", {})
        total = row["total_steps"] or (cfg.get("plan") or {}).get("steps") or 0
        out = {
            "id": row["id"],
            "state": row["status"],
            "stage": cfg.get("stage", ""),
            "speaker": row["speaker"],
            "export_name": row["export_name"],
            "persona_id": row["persona_id"],
            "persona_name": (cfg.get("persona") or {}).get("name") or _persona_name(self.store, row["persona_id"]),
            "step": row["step"],
            "total_steps": total,
            "fraction": round(row["step"] / total, 4) if total else 0.0,
            "loss": live.get("loss"),
            "learning_rate": live.get("learning_rate"),
            "tokens_per_s": live.get("tokens_per_s"),
            "s_per_step": live.get("s_per_step"),
            "eta_s": live.get("eta_s") if row["status"] == "running" else None,
            "config": cfg.get("train", {}),
            "plan": cfg.get("plan"),
            "data": cfg.get("data"),
            "evaluation": row["evaluation"],
            "result": cfg.get("result"),
            "kept_step": (cfg.get("result") or {}).get("kept_step"),
            "warnings": list(cfg.get("warnings") or []),
            "error": row["error"],
            "adapter_id": row["adapter_id"],
            "resumable": row["status"] in ("failed", "cancelled"),
            "created": row["created"],
            "updated": row["updated"],
        }
        if history:
            rows = self.store.training.progress(run_id)
            out["history"] = {
                "train": [[r["step"], r["loss"]] for r in rows if r["loss"] is not None],
                "eval": [[r["step"], r["eval_loss"]] for r in rows if r["eval_loss"] is not None],
            }
        return out

    def runs(self, limit: int = 50) -> list[dict]:
        """Past and present runs, newest first, without their loss history."""
        return [self.status(r["id"], history=False) for r in self.store.training.list(limit)]

    def cancel(self, run_id: str) -> dict:
        """Stop the run after its current step; no adapter is written. Checkpoints stay,
        so a cancelled run can be resumed."""
        row = self._reconcile(self.store.training.get(run_id))
        if row["status"] in ("queued", "running"):
            # the worker stops at its next stage or step; a run not yet started never starts
            self.store.training.set_status_if(run_id, ("queued", "running"), "cancelling")
            self._reconcile(self.store.training.get(run_id))
        return self.status(run_id, history=False)

    def resume(self, run_id: str) -> dict:
        """Continue a failed or cancelled run from its last complete checkpoint."""
        row = self._reconcile(self.store.training.get(run_id))
        if row["status"] not in ("failed", "cancelled"):
            raise ChorusError(f"Only failed or cancelled runs can be resumed; this one is {row['status']}.")
        self._check_idle()
        try:
            requeued = self.store.training.requeue(run_id)  # checks again, in one transaction
        except RunActive as exc:
            raise TrainingBusy(str(exc), exc.row["id"]) from None
        if not requeued:
            raise ChorusError("The run changed while resuming it; look at it again.")
        self.store.training.update(run_id, config={"stage": "queued"})
        try:
            self._spawn(run_id)
        except OSError as exc:
            self.store.training.set_status_if(run_id, ("queued",), "failed", error=f"The training process could not start ({exc}).")
            raise ChorusError(f"The training process could not start ({exc}).") from None
        return self.status(run_id, history=False)

    def delete(self, run_id: str) -> None:
        """Forget a run that is not going, and its folder (its adapter, if any, stays)."""
        row = self._reconcile(self.store.training.get(run_id))
        if row["status"] in ACTIVE:
            raise ChorusError("Cancel the run before deleting it.")
        self.store.training.delete(run_id)
        shutil.rmtree(run_folder(self.store.home, run_id), ignore_errors=True)

    # the serving process -----------------------------------------------------------

    def poll(self) -> list[dict]:
        """Notice dead workers, reap finished children, and hot-load the adapters of
        finished runs into the engine. Returns the runs that finished since the last call."""
        from core.engine import AdapterRef

        self._reap()
        newly = []
        for row in self.store.training.list(20):
            if row["status"] != "finished" or row["id"] in self._loaded:
                continue
            self._loaded.add(row["id"])
            tidy(run_folder(self.store.home, row["id"]))  # a worker killed after finishing leaves its checkpoints
            if self.engine is not None and row["adapter_id"]:
                try:
                    adapter = self.store.adapters.get(row["adapter_id"])
                    persona = self.store.personas.get(adapter["persona_id"])
                    if persona.get("adapter_id") == adapter["id"]:
                        self.engine.ensure_adapter(AdapterRef(persona["id"], self.store.adapters.folder(adapter), adapter["sha256"]))
                except ChorusError:
                    pass  # chat falls back to the card and says why
            newly.append(self.status(row["id"], history=False))
        return newly

    def _reap(self) -> None:
        for row in self.store.training.active():
            self._reconcile(row)
        with self._lock:
            for run_id, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    del self._procs[run_id]

    def mark_seen(self) -> None:
        """Treat every finished run as already loaded (call once when the app starts)."""
        for row in self.store.training.list(1000):
            if row["status"] == "finished":
                self._loaded.add(row["id"])
                tidy(run_folder(self.store.home, row["id"]))

    def wait(self, run_id: str, timeout: float | None = None, *, interval: float = 0.5,
             on_update: Callable[[dict], None] | None = None) -> dict:
        """Wait until the run is no longer active (or `timeout` seconds pass); hot-loading
        is left to `poll`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._reap()
            st = self.status(run_id)
            if on_update:
                on_update(st)
            if st["state"] not in ACTIVE:
                return st
            if deadline is not None and time.monotonic() > deadline:
                return st
            time.sleep(interval)


def inspect_export(export_path: Path, progress=None) -> dict:
    """The export's format, speakers (most messages first) and a suggested card for each.
    Needs no model, so the page can show it while the model loads. `progress(done, total)`
    is called with bytes read."""
    from core.chatimport import load_export

    from core.chatimport.loader import FORMATS

    result = load_export(Path(export_path), progress)
    greetings = _greetings(result)
    return {
        "format": result.format,
        "format_label": FORMATS[result.format][0],
        "messages": result.message_count,
        "notes": list(result.notes),
        "speakers": [
            {"name": name, "messages": count, "card": {"name": name, "greeting": greetings.get(name, "")},
             "thin": thin_voice(name, count)}
            for name, count in result.speakers.items()
        ],
    }


def thin_voice(speaker: str, messages: int) -> str | None:
    """The warning for a speaker with few messages (None when there are enough)."""
    if messages >= THIN_VOICE:
        return None
    return (f"{speaker} has only {messages} messages in this export (under {THIN_VOICE}): the voice may be thin; "
            "the adapter may learn little beyond the card. A longer export gives a truer voice.")


def _persona_name(store: Store, persona_id: str | None) -> str | None:
    if not persona_id:
        return None
    try:
        return store.personas.get(persona_id)["name"]
    except ChorusError:
        return None


def _greetings(result) -> dict[str, str]:
    """Per speaker, a short message of theirs that opened a conversation or a session."""
    from core.chatimport.model import TEXT, sort_key

    found: dict[str, str] = {}
    fallback: dict[str, str] = {}
    last_idx, last_time = None, None
    for idx, msg in result.iter_messages():
        if msg.kind != TEXT or not msg.speaker or msg.forwarded:
            continue
        text = " ".join(msg.text.split())
        opens = idx != last_idx or (
            msg.time is not None and last_time is not None and sort_key(msg.time) - sort_key(last_time) > timedelta(hours=6)
        )
        last_idx, last_time = idx, msg.time or last_time
        if not 2 <= len(text) <= 160:
            continue
        fallback.setdefault(msg.speaker, text)
        if opens:
            found.setdefault(msg.speaker, text)
    return {**fallback, **found}
