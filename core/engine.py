"""The inference engine: one base model, its tokenizer, and the persona adapters resident
beside it.

Every request names the adapter it wants (or none, for the bare base); there is no
global "current persona" that another session could change under it. Adapters are
checked and read from disk outside the lock, injected under it, and published only once
complete, so no request ever runs on a half-loaded adapter. Generation, injection and
eviction share one lock: a reply is computed exactly as if it were alone, which with a
seed makes it reproducible and keeps voices from mixing.

The LoRA layers run the lean forwards of core/lora_fast.py (bitwise what peft computes);
a group of personas is decoded as one batch with per-row adapters; an evicted adapter's
file, once checked, is read straight back into its slot (core/adapter_io.py). Generation
runs on the CPU threads `default_threads` picks. docs/performance.md has the measurements.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from core.adapter_io import WeightsFile, checked_key, layout_of
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


def default_threads() -> tuple[int, int]:
    """(decode, prompt) CPU threads: CHORUS_THREADS="decode,prompt" if set; else 1 and 1 on
    a machine with 2 cores or fewer, 2 and all of torch's on a bigger one.

    One decode step of a 135M model is some 300 small ops; a second OpenMP thread on 2
    cores that something else also uses (the browser, other jobs) makes every op wait for a
    descheduled thread. Measured on 2 shared cores: decode 31 ms/step on 1 thread, 60-1900
    on 2; a 156-token prompt 0.7-1.1 s on 1 thread, 3.1-3.7 s on 2 (idle, 2 threads were
    1.75x faster on prompts and 10% on decode). Bigger machines are not measured here."""
    import torch

    env = os.environ.get("CHORUS_THREADS", "")
    if env:
        decode, _, prompt = env.partition(",")
        return max(1, int(decode)), max(1, int(prompt or decode))
    if (os.cpu_count() or 1) <= 2:
        return 1, 1
    return 2, torch.get_num_threads()


class DecodeThreads:
    """Runs a model's forwards of at most `small` tokens on `decode` threads, bigger ones
    (prompts) on `prefill` threads, while `active()` is entered; restores the setting after.
    Outputs do not depend on it here (the GEMMs split rows and columns, not sums; tests
    compare replies on these threads with stock peft on torch's default)."""

    def __init__(self, model, decode: int, prefill: int, small: int = 8):
        self.decode, self.prefill, self.small = decode, prefill, small
        self._on = 0
        model.register_forward_pre_hook(self._pick, with_kwargs=True)

    def _pick(self, module, args, kwargs):
        import torch

        if not self._on:
            return None
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0] if args else kwargs.get("inputs_embeds")
        tokens = ids.shape[0] * ids.shape[1] if ids is not None and ids.dim() >= 2 else self.small + 1
        want = self.decode if tokens <= self.small else self.prefill
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        return None

    @contextmanager
    def active(self):
        import torch

        before = torch.get_num_threads()
        self._on += 1
        try:
            yield
        finally:
            self._on -= 1
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def _dense_head_input(module, args):
    """lm_head's input as a freshly laid out tensor. transformers passes it
    `hidden[:, -1:, :]` (logits for the last position only), a view whose batch stride is
    the whole prompt's; on this CPU the bf16 matmul then takes a path 16x slower (106 ms
    against 6.4 ms for SmolLM2's 49152x576 head) that gives the same bits. Copying the
    last position's row (576 values per row) puts it back on the fast path."""
    import torch

    x = args[0] if args else None
    if x is None or x.dim() < 2 or x.stride(0) == x[0].numel():
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        info: ModelInfo,
        *,
        max_resident: int = 8,
        context_limit: int | None = None,
        threads: tuple[int, int] | None = None,
    ):
        import torch

        if max_resident < 1:
            raise ChorusError("--max-resident-adapters must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_resident = max_resident
        self.context_limit = min(info.context_length, context_limit or DEFAULT_CONTEXT_LIMIT)
        self.pool = AdapterPool(model, capacity=max_resident)
        self._sha_cache: dict = {}
        self._checked: OrderedDict[str, str] = OrderedDict()  # checked_key -> digest of the accepted layout
        self._shapes = module_shapes(model)
        self._lock = threading.RLock()
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._by_persona: dict[str, str] = {}
        self.last_switch: dict = {}
        self.last_generation: dict = {}
        decode, prompt = threads or default_threads()
        self.threads = DecodeThreads(model, decode, prompt)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            head.register_forward_pre_hook(_dense_head_input)

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
        tensors = self._checked_weights(spec)
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

    def _checked_weights(self, spec: AdapterSpec):
        """The adapter's tensors after the full check; or, for a file this engine already
        accepted (same sha256, config and metadata) whose header still lists exactly the
        accepted tensors, its header, from which the pool reads straight into the slot."""
        key = checked_key(spec)
        layout = self._checked.get(key)
        if layout is not None and self.info.device == "cpu":  # preadv fills CPU memory only
            weights = WeightsFile.read_header(spec.folder / "adapter_model.safetensors")
            if weights.layout_digest() == layout:
                self._checked.move_to_end(key)
                return weights
        tensors = check_compatible(spec, self._shapes, self.info)
        self._checked[key] = layout_of(tensors)
        while len(self._checked) > 256:
            self._checked.popitem(last=False)
        return tensors

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
            try:
                with torch.inference_mode(), self.threads.active():
                    # The LoRA layers live inside self.model; which one runs was set above.
                    out = self.model.generate(**kwargs)
            finally:
                self.pool.fast.forget_input()
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

        The base model's 4-bit matmuls serve all rows at once, and each row applies its
        own adapter through the lean LoRA forwards (core/lora_fast.py), bitwise what peft's
        mixed-adapter batches (`adapter_names`) compute; those are the fallback when a slot
        has layers the lean forward does not serve. Greedy only: sampled rows would share
        one random stream, and a reply must not depend on who else was in the batch.
        """
        import torch

        if settings.temperature > 0:
            raise ChorusError("Grouped decoding is greedy only; use temperature 0.")
        if len({r.persona_id for _, r in requests if r is not None}) > self.max_resident:
            raise ChorusError(f"A group can hold at most {self.max_resident} adapters (--max-resident-adapters).")
        for _, ref in requests:
            if ref is not None:
                self.ensure_adapter(ref)
        with self._lock:
            names = [self.ensure_adapter(ref) if ref is not None else None for _, ref in requests]
            width = max(len(ids) for ids, _ in requests)
            pad = self.tokenizer.pad_token_id
            device = next(self.model.parameters()).device
            batch = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids, _ in requests], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in requests], device=device)
            active = self.pool.active
            self.pool.activate(None)  # layers no row targets must run bare
            t0 = time.perf_counter()
            try:
                with torch.inference_mode(), self.pool.rows(names) as lean, self.threads.active():
                    if lean or self.peft is None:
                        model, extra = self.model, {}
                    else:
                        model, extra = self.peft, {"adapter_names": [n or "__base__" for n in names]}
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
            finally:
                self.pool.fast.forget_input()
                self.pool.activate(active)
            elapsed = time.perf_counter() - t0
            new = out[:, width:]
            self.last_generation = {
                "tokens": int(new.numel()),
                "seconds": round(elapsed, 3),
                "tok_s": round(new.numel() / elapsed, 1) if elapsed > 0 else None,
                "group": len(requests),
                "lean_rows": bool(lean),
            }
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
