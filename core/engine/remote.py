"""The remote engine: the same `EngineBackend` as the local NF4 engine, served by an
OpenAI-compatible server (vLLM, or another Chorus's `serve`) that holds the base model.

Chorus keeps the tokenizer and renders every prompt itself (cards, templates without a
system role, groups), then sends the token ids to the server's `/v1/completions` with the
adapter's published name as the model, so a persona says the same things here as on the
local engine. Nothing else is loaded here: the model folder gives the tokenizer and config.

At connect time the server must answer, serve the base model Chorus expects (by name, and
by the token count of a probe text, so another model under the right name is caught), and
say how it takes adapters (core/engine/remote_adapters.py). A server that goes away
mid-reply ends the reply with `EngineUnreachable`: the chat keeps what was written, and
the next message simply tries again. `status()` is a snapshot and never waits.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from core.engine.base import DEFAULT_CONTEXT_LIMIT, AdapterRef, GenerationSettings
from core.engine.publish import AdapterShelf
from core.engine.remote_adapters import ServerAdapters, detect_mode
from core.engine.remote_http import EngineRefused, ServerClient
from core.errors import ChorusError, ModelUnavailable
from core.loader import ModelInfo, config_fingerprint, model_name_matches

# Mixed scripts, digits and spacing: two tokenizers that differ rarely agree on its count.
PROBE = "Chorus probe: naïve café 東京 1234567 ünïcödé\n\tindent  -> ok?"
LOADING_WAIT_S = 120.0  # how long a server still loading its model is waited for at start


def _base_entries(models: list[dict]) -> list[dict]:
    """The base models of a /v1/models list: vLLM lists adapters with a `parent`; Chorus
    lists personas as owned_by "chorus" and its base as owned_by "base"."""
    return [m for m in models if m.get("owned_by") == "base" or (not m.get("parent") and m.get("owned_by") != "chorus")]


def _describe(source, context_limit: int | None, served_len: int | None, url: str, load_s: float):
    from transformers import AutoConfig, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(str(source.path))
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Could not read the tokenizer of '{source.name}' from {source.path}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    length = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
    if served_len:
        length = min(length, int(served_len))
    info = ModelInfo(
        name=source.name, path=str(source.path), architecture=(cfg.architectures or ["unknown"])[0],
        model_type=cfg.model_type, fingerprint=config_fingerprint(cfg), vocab_size=int(cfg.vocab_size),
        context_length=length, quantization="served remotely", device=url, footprint_mb=0.0, load_s=load_s,
    )
    return tokenizer, info, min(length, context_limit or DEFAULT_CONTEXT_LIMIT)


class RemoteEngine:
    def __init__(self, client: ServerClient, tokenizer, info: ModelInfo, served: dict, *, context_limit: int,
                 adapter_dir: Path | None, max_resident: int, adapter_mode: str):
        self.client = client
        self.tokenizer = tokenizer
        self.info = info
        self.served_name = served["id"]
        owner = str(served.get("owned_by") or "")
        self.server_kind = {"base": "Chorus", "vllm": "vLLM"}.get(owner, owner or "an OpenAI-compatible server")
        self.context_limit = context_limit
        self.max_resident = max_resident
        shelf = AdapterShelf(adapter_dir, self.served_name) if adapter_dir else None
        probe = list(tokenizer(PROBE)["input_ids"])
        self.adapters = ServerAdapters(client, shelf, info, adapter_mode, max_resident, probe)
        self.last_generation: dict = {}
        self._busy = threading.Condition()
        self._running = 0

    @classmethod
    def connect(cls, url: str, source, *, api_key: str | None = None, adapter_dir: str | Path | None = None,
                max_resident: int = 8, context_limit: int | None = None, adapter_mode: str | None = None) -> "RemoteEngine":
        """Check the server at `url` against the model folder `source` (a ModelSource) and
        return the engine; a server that is down or serves another model raises, naming both."""
        t0 = time.perf_counter()
        client = ServerClient(url, api_key)
        try:
            return cls._connect(client, source, t0, adapter_dir, max_resident, context_limit, adapter_mode)
        except BaseException:
            client.close()
            raise

    @classmethod
    def _connect(cls, client, source, t0, adapter_dir, max_resident, context_limit, adapter_mode) -> "RemoteEngine":
        deadline = time.monotonic() + LOADING_WAIT_S
        while True:
            try:
                models = client.json("GET", "/models").get("data") or []
                break
            except EngineRefused as exc:  # a Chorus server says 503 while its model loads
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        bases = _base_entries(models)
        served = next((m for m in bases if model_name_matches(m.get("id"), source.name)), None)
        if served is None:
            names = ", ".join(str(m.get("id")) for m in bases) or "no base model"
            raise ModelUnavailable(f"The engine server at {client.url} serves {names}, but Chorus expects {source.name} "
                                   f"(--model). Start the server with {source.name}, or start Chorus with --model set to "
                                   "the model the server serves.")
        tokenizer, info, limit = _describe(source, context_limit, served.get("max_model_len"), client.url,
                                           round(time.perf_counter() - t0, 2))
        _check_tokenizer(client, served["id"], tokenizer, source.name)
        mode = adapter_mode or detect_mode(client)
        client.at_start = False
        return cls(client, tokenizer, info, served, context_limit=limit, adapter_dir=Path(adapter_dir) if adapter_dir else None,
                   max_resident=max_resident, adapter_mode=mode)

    # adapters ---------------------------------------------------------------------------

    def check_adapter(self, folder: Path, expected_sha256: str | None = None):
        """The checks that need no weights in memory: format, checksum, and the base it was
        made for; the server checks the tensors when it loads them."""
        return self.adapters.check(folder, expected_sha256)

    def ensure_adapter(self, ref: AdapterRef, *, pin: bool = False, wait: bool = True) -> str:
        return self.adapters.model_for(ref)

    def forget(self, persona_id: str) -> None:
        self.adapters.forget(persona_id)

    def resident(self) -> list[str]:
        return self.adapters.held()

    # generation -------------------------------------------------------------------------

    def prompt_budget(self, max_new_tokens: int) -> int:
        return max(self.context_limit - max_new_tokens, 64)

    def stream(self, input_ids: list[int], adapter: AdapterRef | None, settings: GenerationSettings,
               stop: threading.Event | None = None, result: dict | None = None) -> Iterator[str]:
        """Yield the reply's text as the server streams it; `result` gets the same figures
        as the local engine's (tokens, seconds, tok_s, stopped, prompt_tokens, finish_reason)."""
        stop = stop or threading.Event()
        model = self.adapters.acquire(adapter) if adapter is not None else self.served_name
        if settings.seed is None:
            settings.seed = random.randrange(2**31)
        body = {
            "model": model, "prompt": list(input_ids), "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p,
            "top_k": settings.top_k or -1,  # off: -1 is understood by every vLLM and by Chorus
            "repetition_penalty": settings.repetition_penalty, "min_tokens": settings.min_new_tokens,
            "seed": settings.seed, "stream": True, "stream_options": {"include_usage": True},
        }
        if settings.stop:
            body["stop"] = list(settings.stop)
        usage, finish, pieces = {}, None, 0
        t0 = time.perf_counter()
        with self._busy:
            self._running += 1
        try:
            for attempt in (1, 2):
                try:
                    for chunk in self.client.stream(body, stop):
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            finish = choice.get("finish_reason") or finish
                            if choice.get("text"):
                                pieces += 1
                                yield choice["text"]
                    break
                except EngineRefused as exc:
                    if exc.status != 404 or adapter is None or pieces or attempt == 2:
                        raise
                    # The server forgot the adapter (it restarted): hand it over again, once.
                    self.adapters.lost(model)
                    self.adapters.release(model)
                    model = body["model"] = self.adapters.acquire(adapter)
        finally:
            elapsed = time.perf_counter() - t0
            tokens = int(usage.get("completion_tokens") or pieces)
            figures = {
                "tokens": tokens, "seconds": round(elapsed, 3), "tok_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "stopped": stop.is_set(), "prompt_tokens": int(usage.get("prompt_tokens") or len(input_ids)),
                "finish_reason": "stopped" if stop.is_set() and finish is None else finish, "batch": None,
            }
            if result is not None:
                result.update(figures)
            self.last_generation = figures
            if adapter is not None:
                self.adapters.release(model)
            with self._busy:
                self._running -= 1
                self._busy.notify_all()

    def generate(self, input_ids, adapter, settings, stop=None, result=None) -> str:
        return "".join(self.stream(input_ids, adapter, settings, stop, result))

    def generate_group(self, requests: list[tuple[list[int], AdapterRef | None]], settings: GenerationSettings) -> list[str]:
        """Greedy replies for several personas, sent at once so the server can batch them."""
        if settings.temperature > 0:
            raise ChorusError("Grouped decoding is greedy only; use temperature 0.")
        if settings.seed is None:
            settings.seed = random.randrange(2**31)
        texts: list[str | BaseException] = [""] * len(requests)

        def one(i, ids, ref):
            try:
                texts[i] = self.generate(ids, ref, replace(settings))
            except BaseException as exc:  # raised below, in the caller's thread
                texts[i] = exc

        threads = [threading.Thread(target=one, args=(i, ids, ref), daemon=True) for i, (ids, ref) in enumerate(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for text in texts:
            if isinstance(text, BaseException):
                raise text
        return texts

    def idle(self, timeout: float | None = None) -> bool:
        with self._busy:
            return self._busy.wait_for(lambda: self._running == 0, timeout)

    def status(self) -> dict:
        return {
            **self.info.as_dict(), "backend": "remote", "server": self.client.url, "server_kind": self.server_kind,
            "served_model": self.served_name, "adapter_mode": self.adapters.mode,
            "adapter_dir": str(self.adapters.shelf.root) if self.adapters.shelf else None,
            "resident_adapters": self.adapters.held(), "served_adapters": self.adapters.names(),
            "max_resident_adapters": self.max_resident, "context_limit": self.context_limit,
            "last_switch": {}, "last_generation": dict(self.last_generation), "fast_paths": {},
            "queue": 0, "running": self._running,
        }


def _check_tokenizer(client: ServerClient, served: str, tokenizer, expected: str) -> None:
    """The server must count the probe text's tokens as this tokenizer does (it tokenizes
    text prompts with the model's own tokenizer, with its special tokens, as Chorus does)."""
    mine = len(tokenizer(PROBE)["input_ids"])
    answer = client.json("POST", "/completions", {"model": served, "prompt": PROBE, "max_tokens": 1, "temperature": 0})
    theirs = (answer.get("usage") or {}).get("prompt_tokens")
    if theirs is not None and int(theirs) != mine:
        raise ModelUnavailable(
            f"The engine server at {client.url} serves '{served}', but its tokenizer reads a probe text as {theirs} tokens "
            f"where {expected}'s reads {mine}: it serves another model under that name. Start it with {expected}.")
