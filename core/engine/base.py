"""What every engine backend offers the services above it, and the types they exchange.

The services (chat, groups, the API, training's hot-load) hold an `EngineBackend`; which
one runs (the local NF4 engine in core/engine/local.py, or a remote server) is decided
once, at start. Nothing here imports torch: the page and the command line use these types.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from core.errors import ChorusError

DEFAULT_CONTEXT_LIMIT = 4096


@dataclass(frozen=True)
class AdapterRef:
    """The adapter a request wants: whose it is, where it lives, and its checksum."""

    persona_id: str
    folder: Path
    sha256: str | None = None


@dataclass
class GenerationSettings:
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 200
    seed: int | None = None  # None: a fresh random seed, recorded with the reply
    min_new_tokens: int = 0  # benchmarks force a fixed length; chat leaves it at 0
    stop: tuple[str, ...] = field(default_factory=tuple)  # the reply ends before any of these

    def __post_init__(self):
        if not 0 <= self.temperature <= 5:
            raise ChorusError("Temperature must be between 0 and 5.")
        if not 0 < self.top_p <= 1:
            raise ChorusError("Top-p must be above 0 and at most 1.")
        if not 0 <= int(self.top_k) <= 100_000:
            raise ChorusError("Top-k must be between 0 (off) and 100000.")
        if not 0 < self.repetition_penalty <= 10:
            raise ChorusError("Repetition penalty must be above 0 and at most 10.")
        if not 1 <= int(self.max_new_tokens) <= 8192:
            raise ChorusError("Max new tokens must be between 1 and 8192.")
        self.max_new_tokens = int(self.max_new_tokens)
        self.top_k = int(self.top_k)
        if self.seed is not None:
            self.seed = int(self.seed)
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stops) > 4 or any(not isinstance(s, str) or not s for s in stops):
            raise ChorusError("Stop sequences: at most 4, each a non-empty string.")
        self.stop = stops

    def as_dict(self) -> dict:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out


class EngineBackend(Protocol):
    """One base model serving persona adapters. `stream` is the one way to generate:
    concurrent calls are decoded together where the backend can batch them."""

    tokenizer: object
    info: object  # core.loader.ModelInfo: the base model's name, folder, fingerprint, family
    context_limit: int

    def stream(self, input_ids: list[int], adapter: AdapterRef | None, settings: GenerationSettings,
               stop: threading.Event | None = None, result: dict | None = None) -> Iterator[str]: ...

    def generate(self, input_ids, adapter, settings, stop=None) -> str: ...

    def prompt_budget(self, max_new_tokens: int) -> int: ...

    def idle(self, timeout: float | None = None) -> bool: ...  # no reply runs or waits (False: timed out)

    def check_adapter(self, folder: Path, expected_sha256: str | None = None): ...

    def ensure_adapter(self, ref: AdapterRef, *, pin: bool = False) -> str: ...

    def forget(self, persona_id: str) -> None: ...

    def resident(self) -> list[str]: ...

    def status(self) -> dict: ...
