"""The running app's services: the store at once, the model in the background.

The web page is usable while the model loads; anything that needs the model asks the
runtime, which either hands out the chat service or says plainly that it is loading.
A training run asked for while the model loads waits here and starts once it is ready
(`start_training`, `waiting_training`).

`switch_model` replaces the model while the app runs: serving stops (a reply in progress
finishes first), the old engine is freed, the new one loads in the background with the same
progress as the first load, and the chat and training services move onto it. A training run
already going keeps its own model (it runs in a worker process). A model that fails to load
leaves the previous one back in place and the reason on the status line. The model chosen
last is remembered in $CHORUS_HOME/model.json (core/model_catalog.py) for the next start.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.chat import ChatService
from core.engine import Engine, EngineBackend
from core.errors import ChorusError
from core.logs import quiet_libraries
from core.model_catalog import remember_model, same_model
from core.model_source import resolve_model
from core.starter import seed_starters
from core.training.config import TrainConfig
from core.training.service import TrainingBusy, TrainingService
from storage.store import Store


class ModelLoading(ChorusError):
    """The model is still loading."""


# How long a switch waits for a reply in progress on the old model before freeing it anyway.
SWITCH_WAIT_S = 120.0


@dataclass
class RuntimeOptions:
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct (app.py passes the remembered choice)
    max_resident_adapters: int = 8
    quantize: bool = True  # NF4; False loads bf16 (for comparisons)
    context_limit: int | None = None
    # A remote engine server (vLLM, or another Chorus's `serve`) instead of the local engine;
    # docs/scale-out.md. None: the local NF4 engine.
    engine_url: str | None = None
    engine_api_key: str | None = None  # never printed nor logged
    engine_adapter_dir: str | None = None  # where adapters are published; the server reads the same path


def engine_options(args) -> dict:
    """The engine backend options of a parsed command line (app.py), for RuntimeOptions."""
    return {"engine_url": getattr(args, "engine", None),
            "engine_api_key": getattr(args, "engine_api_key", None) or os.environ.get("CHORUS_ENGINE_API_KEY") or None,
            "engine_adapter_dir": getattr(args, "engine_adapter_dir", None)}


class Runtime:
    def __init__(self, options: RuntimeOptions, home: Path | None = None):
        self.options = options
        self.store = Store(home)
        seed_starters(self.store)
        self._chat: ChatService | None = None
        self._error: ChorusError | None = None
        self._ready = threading.Event()
        self.progress: list[str] = []
        self.started = time.time()
        self._training = None
        self._closed = threading.Event()
        # Training runs asked for before the model was ready: token -> {"request", "run", "error"}.
        self._waiting: dict[str, dict] = {}
        self._waiting_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._switching: str | None = None  # the model being switched to, while it loads
        self._retiring: ChatService | None = None  # the service being replaced, until the switch drops it
        self.switch_error: str | None = None  # why the last switch failed (the status line says it)

    def _note(self, message: str) -> None:
        self.progress.append(message)
        # Status, not an answer: stderr, so `app.py chat ... > reply.txt` holds only the reply.
        print(message, file=sys.stderr, flush=True)

    def load(self) -> ChatService:
        """Load the model in this thread (command line) and return the chat service."""
        quiet_libraries()
        try:
            self._install(self._load_engine(self.options.model))
        except ChorusError as exc:
            self._error = exc
            raise
        except Exception as exc:  # a failed load must reach the page as a message
            self._error = ChorusError(f"The model could not be loaded: {type(exc).__name__}: {exc}")
            raise self._error from exc
        finally:
            self._ready.set()
            self._start_waiting()
        return self._chat

    def _load_engine(self, spec: str | None) -> "EngineBackend":
        self._note("Preparing the model...")
        # Download byte counts go to the page (its loading message is the last note), not to
        # stderr, where the hub draws its own bar.
        source = resolve_model(spec, self.store.home, self._note, download_report=self.progress.append,
                               context_limit=self.options.context_limit)
        if self.options.engine_url:
            from core.engine.remote import RemoteEngine

            self._note(f"Connecting to the engine server at {self.options.engine_url} (it serves {source.name})...")
            return RemoteEngine.connect(self.options.engine_url, source, api_key=self.options.engine_api_key,
                                        adapter_dir=self.options.engine_adapter_dir,
                                        max_resident=self.options.max_resident_adapters,
                                        context_limit=self.options.context_limit)
        self._note(f"Loading {source.name} ({'NF4 4-bit' if self.options.quantize else 'bf16'})...")
        return Engine.load(
            source,
            max_resident=self.options.max_resident_adapters,
            quantize=self.options.quantize,
            context_limit=self.options.context_limit,
        )

    def _install(self, engine: "EngineBackend") -> None:
        """Serve `engine`: a chat service on it, and the training service moved onto it."""
        self._chat = ChatService(self.store, engine)
        with self._waiting_lock:
            if self._training is None:
                training = TrainingService(self.store, engine)
                training.mark_seen()  # adapters of runs finished before this start are loaded on demand
                self._training = training
            else:  # the same service (it knows the workers it started); new runs train on the new model
                self._training.serve_on(engine)
        where = engine.status()
        if where.get("backend") == "remote":  # the server holds the weights
            self._note(f"Model ready: {engine.info.name}, served by {where['server_kind']} at {where['server']} "
                       f"(adapters: {where['adapter_mode']}).")
        else:
            self._note(f"Model ready: {engine.info.name}, {engine.info.quantization}, {engine.info.footprint_mb} MB.")

    # switching the model while the app runs ------------------------------------------------

    def switch_model(self, spec: str) -> threading.Thread:
        """Start replacing the served model by `spec` (a hub id, a folder, or the embedded
        model's name) in the background; the status line shows the progress."""
        spec = (spec or "").strip()
        if not spec:
            raise ChorusError("Name a model: pick a cached one, or type a hub id (org/name) or a model folder.")
        if Path(spec).expanduser().exists():  # remembered for the next start, whatever its working folder
            spec = str(Path(spec).expanduser().resolve())
        with self._switch_lock:
            if self._switching or not self._ready.is_set():
                raise ModelLoading(f"A model is loading ({self._last()}); switch once it is ready.")
            if self._chat is not None and same_model(spec, self.options.model):
                raise ChorusError(f"{self._chat.engine.info.name} is already the running model.")
            self._switching = spec
            self.switch_error = None
            self._error = None  # a failed first load is what a switch may be recovering from
            self.started = time.time()
            self._ready.clear()
            # Handed to the switching thread through an attribute, not its arguments, which
            # the thread keeps until it ends: the old engine must be freeable before the new loads.
            self._retiring, self._chat = self._chat, None  # new requests now hear that the model is switching
            if self._training is not None:
                self._training.engine = None  # a run finishing now is loaded on demand later
        thread = threading.Thread(target=self._switch, args=(spec,), name="chorus-model-switch", daemon=True)
        thread.start()
        return thread

    def _switch(self, spec: str) -> None:
        previous = self.options.model
        old, self._retiring = self._retiring, None
        had_model = old is not None
        quiet_libraries()
        try:
            if old is not None:
                self._note(f"Switching to {spec}: stopping {old.engine.info.name}...")
                self._wait_idle(old.engine)
            del old
            self._release_memory()
            try:
                engine = self._load_engine(spec)
            except Exception as exc:  # the page must hear why, and keep a model to chat with
                why = str(exc) if isinstance(exc, ChorusError) else f"{type(exc).__name__}: {exc}"
                self.switch_error = f"Could not switch to {spec}: {why}"
                self._note(self.switch_error)
                gc.collect()
                if had_model:  # the model served before loaded once: bring it back
                    self._note(f"Loading {previous or 'the embedded model'} again...")
                    engine = self._load_engine(previous)
                    self.switch_error += f" Still on {engine.info.name}."
                else:
                    raise
            else:
                self.options.model = spec
                where = remember_model(self.store.home, spec)
                self._note(f"{spec} is remembered in {where} for the next start (--model overrides it).")
            self._install(engine)
        except ChorusError as exc:
            self._error = exc
        except Exception as exc:
            self._error = ChorusError(f"The model could not be loaded: {type(exc).__name__}: {exc}")
        finally:
            self._switching = None
            self._ready.set()
            self._start_waiting()

    @staticmethod
    def _wait_idle(engine: "EngineBackend") -> None:
        """Let a reply in progress on `engine` finish (new ones cannot start: its chat service is gone)."""
        engine.idle(SWITCH_WAIT_S)

    @staticmethod
    def _release_memory() -> None:
        """Free the old model before the new one loads (they need not fit side by side)."""
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def switching(self) -> str | None:
        """The model being switched to, while it loads; None otherwise."""
        return self._switching

    # training asked for while the model loads -------------------------------------------

    def start_training(self, **request) -> dict:
        """Start a training run (`request`: TrainingService.start's arguments): {"run": id}
        when the model is ready; while it loads, {"waiting": token}: the run starts when it
        is ready (see `waiting_training`). A failed load raises its error."""
        with self._waiting_lock:
            if (self._training is None or self._switching) and self._error is None:
                if not request.get("consent"):
                    raise ChorusError("Confirm that you may use the messages of the person whose voice is learned.")
                TrainConfig.from_dict(request.get("config"))  # a bad setting is said now, not after the load
                if any(w["run"] is None and w["error"] is None for w in self._waiting.values()):
                    raise TrainingBusy("A training run is already waiting for the model to load; it starts when the model is ready.")
                token = f"waiting-{len(self._waiting) + 1}"
                self._waiting[token] = {"request": dict(request), "run": None, "error": None, "cancelled": False}
                return {"waiting": token}
        return {"run": self.training.start(**request)}

    def waiting_training(self, token: str) -> dict | None:
        """A queued request: {"speaker", "persona_name", "run" (its id once started),
        "error" (why it did not start), "cancelled", "note" (the loading progress)}."""
        with self._waiting_lock:
            w = self._waiting.get(token)
            if w is None:
                return None
            req = w["request"]
            return {"speaker": req.get("speaker"), "persona_name": req.get("persona_name"), "run": w["run"],
                    "error": w["error"], "cancelled": w["cancelled"],
                    "note": "the model is ready; starting the run" if self._training and not self._switching else self._last()}

    def cancel_waiting(self, token: str) -> None:
        with self._waiting_lock:
            w = self._waiting.get(token)
            if w and w["run"] is None and w["error"] is None:
                w["cancelled"] = True

    def _start_waiting(self) -> None:
        """Start the runs queued while the model loaded (in the loading thread), or say
        why they cannot start."""
        with self._waiting_lock:
            todo = [w for w in self._waiting.values() if w["run"] is None and w["error"] is None and not w["cancelled"]]
        for w in todo:
            if self._training is None:
                w["error"] = f"Training did not start: {self._error or 'the model could not be loaded.'}"
                continue
            try:
                w["run"] = self._training.start(**w["request"])
            except ChorusError as exc:
                w["error"] = f"Training did not start: {exc}"
            except Exception as exc:  # the loading thread must not die of it; the page says it
                w["error"] = f"Training did not start: {type(exc).__name__}: {exc}"

    def load_in_background(self) -> threading.Thread:
        def run():
            try:
                self.load()
            except ChorusError:
                pass  # kept in self._error and shown on the page

        thread = threading.Thread(target=run, name="chorus-model-load", daemon=True)
        thread.start()
        return thread

    def watch_training(self, every_s: float = 2.0) -> threading.Thread:
        """Poll training runs in the background: finished adapters are hot-loaded into the
        engine (the new persona answers at once), dead workers are marked resumable. Runs
        whether or not a page is open."""

        def run():
            while not self._closed.wait(every_s):
                if self._training is None:
                    continue
                try:
                    self._training.poll()
                except Exception as exc:  # a bad poll must not end the watcher
                    logging.getLogger("chorus").warning("training poll failed: %s", exc)

        thread = threading.Thread(target=run, name="chorus-training-watch", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._closed.set()

    @property
    def training(self) -> TrainingService:
        """The training service (it trains on the model being served, so it waits for it)."""
        if self._training is not None:
            return self._training
        if self._error is not None:
            raise self._error
        raise ModelLoading(f"The model is still loading ({self._last()}); training can start once it is ready.")

    @property
    def ready(self) -> bool:
        return self._chat is not None

    @property
    def error(self) -> ChorusError | None:
        return self._error

    def wait(self, timeout: float | None = None) -> ChatService:
        self._ready.wait(timeout)
        return self.chat

    @property
    def chat(self) -> ChatService:
        if self._chat is not None:
            return self._chat
        if self._error is not None:
            raise self._error
        if self._switching:
            raise ModelLoading(f"The model is switching to {self._switching} ({self._last()}). "
                               "Your message was not sent; try again once it is ready.")
        raise ModelLoading(f"The model is still loading ({self._last()}). Your message was not sent; try again in a moment.")

    def _last(self) -> str:
        return self.progress[-1] if self.progress else "starting"
