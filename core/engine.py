"""The inference engine: one base model, its tokenizer, and the persona adapters resident
beside it.

Every request names the adapter it wants (or none, for the bare base); there is no
global "current persona" that another session could change under it. Adapters are
checked and read from disk outside the lock, injected under it, and published only once
complete, so no request ever runs on a half-loaded adapter. Generation, injection and
eviction share one lock: a reply is computed exactly as if it were alone, which with a
seed makes it reproducible and keeps voices from mixing.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from core.adapter_pool import AdapterPool
from core.adapters import AdapterSpec, check_compatible, inspect_adapter, module_shapes
from core.errors import ChorusError
from core.loader import ModelInfo, load_base
from core.model_source import ModelSource

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

    def __post_init__(self):
        if not 0 <= self.temperature <= 5:
            raise ChorusError("Temperature must be between 0 and 5.")
        if not 0 < self.top_p <= 1:
            raise ChorusError("Top-p must be above 0 and at most 1.")
        if not 1 <= int(self.max_new_tokens) <= 8192:
            raise ChorusError("Max new tokens must be between 1 and 8192.")
        self.max_new_tokens = int(self.max_new_tokens)
        if self.seed is not None:
            self.seed = int(self.seed)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Resident:
    name: str  # the peft adapter name
    persona_id: str
    sha256: str
    spec: AdapterSpec
    file_stat: tuple[int, int]  # (size, mtime_ns) of the weights when they were read
    loaded_at: float = field(default_factory=time.time)


class _StopOnEvent:
    """Ends generation once `event` is set, and remembers whether it was what ended it."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.fired = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.event.is_set():
            self.fired = True
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, model, tokenizer, info: ModelInfo, *, max_resident: int = 8, context_limit: int | None = None):
        if max_resident < 1:
            raise ChorusError("--max-resident-adapters must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_resident = max_resident
        self.context_limit = min(info.context_length, context_limit or DEFAULT_CONTEXT_LIMIT)
        self.pool = AdapterPool(model, capacity=max_resident)
        self._sha_cache: dict = {}
        self._shapes = module_shapes(model)
        self._lock = threading.RLock()
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._by_persona: dict[str, str] = {}
        self.last_switch: dict = {}
        self.last_generation: dict = {}

    @classmethod
    def load(cls, source: ModelSource, *, max_resident: int = 8, quantize: bool = True, context_limit=None) -> "Engine":
        model, tokenizer, info = load_base(source, quantize=quantize)
        return cls(model, tokenizer, info, max_resident=max_resident, context_limit=context_limit)

    # adapters --------------------------------------------------------------

    def check_adapter(self, folder: Path, expected_sha256: str | None = None) -> AdapterSpec:
        """Everything the load does short of touching the model: raises if it would not fit."""
        spec = inspect_adapter(folder, expected_sha256)
        check_compatible(spec, self._shapes, self.info)
        return spec

    def resident(self) -> list[str]:
        with self._lock:
            return [r.persona_id for r in self._resident.values()]

    def _resident_for(self, ref: AdapterRef) -> str | None:
        """The resident adapter serving `ref`, if its files are the ones already loaded."""
        name = self._by_persona.get(ref.persona_id)
        res = self._resident.get(name) if name else None
        if res is None or Path(ref.folder) != res.spec.folder:
            return None
        if ref.sha256:
            return name if ref.sha256 == res.sha256 else None
        # No checksum given: trust the file only while its size and mtime are unchanged.
        try:
            st = (Path(ref.folder) / "adapter_model.safetensors").stat()
        except OSError:
            return None
        return name if (st.st_size, st.st_mtime_ns) == res.file_stat else None

    def ensure_adapter(self, ref: AdapterRef) -> str:
        """Make `ref` resident (checking it first) and return the slot that serves it."""
        with self._lock:
            name = self._resident_for(ref)
            if name is not None:
                self._resident.move_to_end(name)
                return name
        spec = inspect_adapter(ref.folder, ref.sha256, sha_cache=self._sha_cache)
        tensors = check_compatible(spec, self._shapes, self.info)
        with self._lock:
            name = self._resident_for(ref)  # another request may have loaded it meanwhile
            if name is not None:
                self._resident.move_to_end(name)
                return name
            name = self.pool.place(spec, tensors, evict=self._evict_lru)
            old = self._by_persona.get(ref.persona_id)
            st = (spec.folder / "adapter_model.safetensors").stat()
            self._resident[name] = _Resident(name, ref.persona_id, spec.sha256, spec, (st.st_size, st.st_mtime_ns))
            self._by_persona[ref.persona_id] = name
            if old and old != name:
                self._release(old)  # a replaced version: nobody can be using it, we hold the lock
            while len(self._resident) > self.max_resident:
                self._evict_lru()
        return name

    def _evict_lru(self) -> None:
        self._release(next(iter(self._resident)))

    def _release(self, name: str) -> None:
        res = self._resident.pop(name, None)
        if res and self._by_persona.get(res.persona_id) == name:
            del self._by_persona[res.persona_id]
        self.pool.release(name)

    def forget(self, persona_id: str) -> None:
        """Drop a persona's resident adapter (deleted persona, detached adapter)."""
        with self._lock:
            name = self._by_persona.get(persona_id)
            if name:
                self._release(name)

    @property
    def peft(self):
        """The PeftModel wrapping the base model (None until the first adapter)."""
        return self.pool.peft

    # generation --------------------------------------------------------------

    def prompt_budget(self, max_new_tokens: int) -> int:
        return max(self.context_limit - max_new_tokens, 64)

    def _activate(self, name: str | None) -> None:
        """Point every LoRA layer at slot `name` (None: the bare base), timing the switch."""
        if name == self.pool.active:
            return
        t0 = time.perf_counter()
        self.pool.activate(name)
        self.last_switch = {"adapter": name, "at": time.time(), "ms": round((time.perf_counter() - t0) * 1000, 3)}

    def stream(
        self,
        input_ids: list[int],
        adapter: AdapterRef | None,
        settings: GenerationSettings,
        stop: threading.Event | None = None,
        result: dict | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text piece by piece; setting `stop` ends it after the current token.

        `result`, if given, is filled with this reply's figures (tokens, seconds, tok_s, and
        whether the stop request is what ended it) once the stream is done.
        """
        from transformers import TextIteratorStreamer

        stop = stop or threading.Event()
        if adapter is not None:
            self.ensure_adapter(adapter)  # slow part outside the generation lock
        if settings.seed is None:
            settings.seed = random.randrange(2**31)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work():
            try:
                stats = self._generate(input_ids, adapter, settings, streamer, stop)
                if result is not None:
                    result.update(stats)
            except BaseException as exc:  # handed to the consumer below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="chorus-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()  # a consumer that went away must not keep the model busy
            worker.join()
        if errors:
            exc = errors[0]
            if isinstance(exc, ChorusError):
                raise exc
            raise ChorusError(f"Generation failed: {type(exc).__name__}: {exc}") from exc

    def generate(self, input_ids, adapter, settings, stop=None) -> str:
        return "".join(self.stream(input_ids, adapter, settings, stop))

    def _generate(self, input_ids, adapter, settings, streamer, stop) -> dict:
        import torch
        from transformers import StoppingCriteriaList

        with self._lock:
            name = self.ensure_adapter(adapter) if adapter is not None else None
            self._activate(name)
            device = next(self.model.parameters()).device
            ids = torch.tensor([input_ids], dtype=torch.long, device=device)
            sample = settings.temperature > 0
            stopper = _StopOnEvent(stop)
            kwargs = dict(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=settings.max_new_tokens,
                min_new_tokens=settings.min_new_tokens or None,
                do_sample=sample,
                repetition_penalty=settings.repetition_penalty,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([stopper]),
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            torch.manual_seed(settings.seed)
            t0 = time.perf_counter()
            with torch.inference_mode():
                # The LoRA layers live inside self.model; which one runs was set above.
                out = self.model.generate(**kwargs)
            elapsed = time.perf_counter() - t0
            new_tokens = int(out.shape[1] - ids.shape[1])
            stats = {
                "tokens": new_tokens,
                "seconds": round(elapsed, 3),
                "tok_s": round(new_tokens / elapsed, 1) if elapsed > 0 else None,
                "stopped": stopper.fired,
            }
            self.last_generation = stats  # for the status line; callers get their own copy
            return dict(stats)

    def generate_group(self, requests: list[tuple[list[int], AdapterRef | None]], settings: GenerationSettings) -> list[str]:
        """Greedy replies for several personas decoded together in one batch.

        peft's mixed-adapter batches route each row through its own adapter (`adapter_names`),
        so four personas cost little more than one on a CPU that is bound by memory traffic.
        Greedy only: sampled rows would share one random stream, and a reply must not
        depend on who else was in the batch.
        """
        import torch

        if settings.temperature > 0:
            raise ChorusError("Grouped decoding is greedy only; use temperature 0.")
        if len([r for _, r in requests if r is not None]) > self.max_resident:
            raise ChorusError(f"A group can hold at most {self.max_resident} adapters (--max-resident-adapters).")
        for _, ref in requests:
            if ref is not None:
                self.ensure_adapter(ref)
        with self._lock:
            names = [self.ensure_adapter(ref) if ref is not None else "__base__" for _, ref in requests]
            if self.peft is None:
                model = self.model
                extra = {}
            else:
                model, extra = self.peft, {"adapter_names": names}
            width = max(len(ids) for ids, _ in requests)
            pad = self.tokenizer.pad_token_id
            device = next(self.model.parameters()).device
            batch = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids, _ in requests], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in requests], device=device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=batch,
                    attention_mask=mask,
                    max_new_tokens=settings.max_new_tokens,
                    min_new_tokens=settings.min_new_tokens or None,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    repetition_penalty=settings.repetition_penalty,
                    pad_token_id=pad,
                    **extra,
                )
            elapsed = time.perf_counter() - t0
            new = out[:, width:]
            self.last_generation = {
                "tokens": int(new.numel()),
                "seconds": round(elapsed, 3),
                "tok_s": round(new.numel() / elapsed, 1) if elapsed > 0 else None,
                "group": len(requests),
            }
            self._activate(self.pool.active)
            return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    def status(self) -> dict:
        with self._lock:
            return {
                **self.info.as_dict(),
                "resident_adapters": [r.persona_id for r in self._resident.values()],
                "max_resident_adapters": self.max_resident,
                "context_limit": self.context_limit,
                "last_switch": dict(self.last_switch),
                "last_generation": dict(self.last_generation),
            }
