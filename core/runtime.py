"""The running app's services: the store at once, the model in the background.

The web page is usable while the model loads; anything that needs the model asks the
runtime, which either hands out the chat service or says plainly that it is loading.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.chat import ChatService
from core.engine import Engine
from core.errors import ChorusError
from core.logs import quiet_libraries
from core.model_source import resolve_model
from core.starter import seed_starters
from core.training.service import TrainingService
from storage.store import Store


class ModelLoading(ChorusError):
    """The model is still loading."""


@dataclass
class RuntimeOptions:
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    max_resident_adapters: int = 8
    quantize: bool = True  # NF4; False loads bf16 (for comparisons)
    context_limit: int | None = None


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

    def _note(self, message: str) -> None:
        self.progress.append(message)
        print(message, flush=True)

    def load(self) -> ChatService:
        """Load the model in this thread (command line) and return the chat service."""
        quiet_libraries()
        try:
            self._note("Preparing the model...")
            source = resolve_model(self.options.model, self.store.home, self._note)
            self._note(f"Loading {source.name} ({'NF4 4-bit' if self.options.quantize else 'bf16'})...")
            engine = Engine.load(
                source,
                max_resident=self.options.max_resident_adapters,
                quantize=self.options.quantize,
                context_limit=self.options.context_limit,
            )
            self._chat = ChatService(self.store, engine)
            self._training = TrainingService(self.store, engine)
            self._training.mark_seen()  # adapters of runs finished before this start are loaded on demand
            self._note(f"Model ready: {engine.info.name}, {engine.info.quantization}, {engine.info.footprint_mb} MB.")
        except ChorusError as exc:
            self._error = exc
            raise
        except Exception as exc:  # a failed load must reach the page as a message
            self._error = ChorusError(f"The model could not be loaded: {type(exc).__name__}: {exc}")
            raise self._error from exc
        finally:
            self._ready.set()
        return self._chat

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
        self.chat  # raises the load error, or ModelLoading with the progress so far
        raise ModelLoading("The model is still loading.")

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
        last = self.progress[-1] if self.progress else "starting"
        raise ModelLoading(f"The model is still loading ({last}). Your message was not sent; try again in a moment.")
