"""The inference engine: one base model, its tokenizer, and the persona adapters resident
beside it.

Every request names the adapter it wants (or none, for the bare base); there is no
global "current persona" that another session could change under it. Adapters are
checked and read from disk outside the lock, injected under it, and published only once
complete, so no request ever runs on a half-loaded adapter. Generation, injection and
eviction share one lock: a reply is computed exactly as if it were alone, which with a
seed makes it reproducible and keeps voices from mixing.

The LoRA layers run the lean forwards of core/engine/lora_fast.py (peft's arithmetic; what is
bitwise peft and what is within bf16 rounding is said there); a self-check at start compares
the one-token kernels with the reference ones on this machine and turns them off where they
disagree (`status()["fast_paths"]`). A group of personas is decoded as one batch with
per-row adapters, every row's slot pinned until the group ends; an evicted adapter's file,
once checked and while unchanged, is read straight back into its slot (core/engine/adapter_io.py
says what is verified when). `status()` and `resident()` serve a snapshot and never wait for a
reply. Generation runs on the CPU threads `default_threads` picks. docs/performance.md has
the measurements.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from core.adapters import AdapterSpec, DigestCache, check_compatible, inspect_adapter, module_shapes
from core.device import model_device, on_model
from core.engine.adapter_io import WeightsFile, checked_key, layout_of
from core.engine.adapter_pool import AdapterPool
from core.engine.base import DEFAULT_CONTEXT_LIMIT, AdapterRef, GenerationSettings
from core.engine.model_hooks import DecodeThreads, _dense_head_input, default_threads
from core.errors import AdapterCorrupt, ChorusError
from core.loader import ModelInfo, load_base
from core.model_source import ModelSource



@dataclass
class _Resident:
    name: str  # the peft adapter name
    persona_id: str
    sha256: str
    spec: AdapterSpec
    file_stat: tuple[int, int, int]  # (size, mtime_ns, ctime_ns) of the weights when they were read
    loaded_at: float = field(default_factory=time.time)
    pins: int = 0  # rows of a group in progress that point at this slot: never evicted then


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
        if max_resident < 1:
            raise ChorusError("--max-resident-adapters must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_resident = max_resident
        self.context_limit = min(info.context_length, context_limit or DEFAULT_CONTEXT_LIMIT)
        self.pool = AdapterPool(model, capacity=max_resident)
        self._shapes = module_shapes(model)
        self._lock = threading.RLock()  # generation, placement, eviction
        # Caches consulted outside the generation lock (while a file is read), each under
        # its own small lock: digests per file state, and the files the full check accepted.
        self._digests = DigestCache()
        self._checked_lock = threading.Lock()
        self._checked: OrderedDict[str, str] = OrderedDict()  # checked_key -> digest of the accepted layout
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # slot -> adapter, least recent first
        self._latest: dict[str, str] = {}  # persona -> the slot of its most recently loaded version
        self.last_switch: dict = {}
        self.last_generation: dict = {}
        decode, prompt = threads or default_threads()
        self.threads = DecodeThreads(model, decode, prompt)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            head.register_forward_pre_hook(_dense_head_input)
        self.fast_paths = self._self_check()
        self._info = info.as_dict()
        self._snapshot: dict = {}
        self._publish()

    @classmethod
    def load(cls, source: ModelSource, *, max_resident: int = 8, quantize: bool = True, context_limit=None) -> "Engine":
        model, tokenizer, info = load_base(source, quantize=quantize, context_limit=context_limit)
        return cls(model, tokenizer, info, max_resident=max_resident, context_limit=context_limit)

    def _self_check(self) -> dict:
        """Compare the one-token fast kernels with the reference ones on this machine (a
        few ms); turn off each that disagrees beyond bf16 rounding. Returns what the
        status line shows: {"ok", "summary", "off": {path: why}, "declined": {path: why},
        "ms"}; "declined" names the fast paths this model's family does not take (Gemma 2
        soft-caps its attention scores: its decode steps keep transformers' attention)."""
        import torch

        from core.engine import attention, lora_fast

        t0 = time.perf_counter()
        off = {}
        if model_device(self.model).type != "cpu":
            return {"ok": True, "summary": "not used off the CPU", "off": {}, "declined": {}, "ms": 0.0}
        declined = {}
        why_not = attention.declined(self.model)
        if why_not:
            declined["decode_attention"] = why_not
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        skip = {name for name, mod in self.model.named_modules() if mod is head}
        shapes = [(i, o) for name, (i, o, kind) in self._shapes.items() if kind == "linear" and name not in skip]
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads.decode)  # the threads one-token steps run on
        try:
            why = lora_fast.self_check(shapes)
            if why:
                off["lora_mv"] = why
                self.pool.fast.use_vector(False)  # one-token steps by F.linear, as peft
            if getattr(self.model.config, "_attn_implementation", None) == attention.NAME:
                why = attention.self_check(self.model.config)
                if why:
                    off["decode_attention"] = why
                    self.model.set_attn_implementation("sdpa")
        finally:
            torch.set_num_threads(before)
        summary = "on" if not off else "off (self-check: " + "; ".join(off.values()) + ")"
        if declined:
            summary += " (declined: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in declined.items()) + ")"
        return {"ok": not off, "summary": summary, "off": off, "declined": declined,
                "ms": round((time.perf_counter() - t0) * 1000, 2)}

    # adapters --------------------------------------------------------------

    def check_adapter(self, folder: Path, expected_sha256: str | None = None) -> AdapterSpec:
        """Everything the load does short of touching the model: raises if it would not fit."""
        spec = inspect_adapter(folder, expected_sha256)
        check_compatible(spec, self._shapes, self.info)
        return spec

    def resident(self) -> list[str]:
        """Persona ids of the resident adapters, least recently used first (no waiting)."""
        return list(self._snapshot["resident_adapters"])

    def _resident_for(self, ref: AdapterRef) -> str | None:
        """The resident slot serving `ref`, if its files are the ones already loaded."""
        for name, res in self._resident.items():
            if res.persona_id != ref.persona_id or Path(ref.folder) != res.spec.folder:
                continue
            if ref.sha256:
                if ref.sha256 == res.sha256:
                    return name
                continue
            # No checksum given: trust the file only while its size, mtime and ctime are
            # unchanged (a write moves the ctime even if it sets the mtime back).
            try:
                st = (Path(ref.folder) / "adapter_model.safetensors").stat()
            except OSError:
                return None
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == res.file_stat:
                return name
        return None

    def ensure_adapter(self, ref: AdapterRef, *, pin: bool = False) -> str:
        """Make `ref` resident (checking it first) and return the slot that serves it.
        pin=True: the slot stays until `unpin` (a group's rows point at it)."""
        with self._lock:
            name = self._resident_for(ref)
            if name is not None:
                return self._use(name, pin)
        # Reading and checking, the slow part, outside the lock (unless the caller holds it).
        loaded = self._read(ref)
        with self._lock:
            name = self._resident_for(ref)  # another request may have loaded it meanwhile
            if name is None:
                name = self._place(ref, *loaded)
            return self._use(name, pin)

    def _use(self, name: str, pin: bool) -> str:
        self._resident.move_to_end(name)
        if pin:
            self._resident[name].pins += 1
        self._publish()
        return name

    def unpin(self, names) -> None:
        """The rows that pinned these slots are done; a superseded version goes now."""
        with self._lock:
            for name in names:
                res = self._resident.get(name)
                if res is not None and res.pins > 0:
                    res.pins -= 1
                    if res.pins == 0 and self._latest.get(res.persona_id) != name:
                        self._release(name)
            self._publish()

    def _read(self, ref: AdapterRef):
        """(spec, tensors or WeightsFile, (size, mtime_ns, ctime_ns)): the checked adapter, ready to place."""
        weights = Path(ref.folder) / "adapter_model.safetensors"
        try:
            st = weights.stat()  # before the read: a change during it shows as a change later
        except OSError:
            st = None
        spec = inspect_adapter(ref.folder, ref.sha256, sha_cache=self._digests)  # a missing file: its error
        if st is None:
            raise AdapterCorrupt(f"The adapter file {weights} changed while it was read; try again.")
        return spec, self._checked_weights(spec), (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _place(self, ref: AdapterRef, spec: AdapterSpec, tensors, file_stat) -> str:
        """Fill a slot and record it, as one step: if the record fails, the slot is freed.
        Older versions of the persona go, unless a group's rows still point at them."""
        name = self.pool.place(spec, tensors, evict=self._evict_lru)
        try:
            self._resident[name] = _Resident(name, ref.persona_id, spec.sha256, spec, file_stat)
            self._latest[ref.persona_id] = name
            for old, res in list(self._resident.items()):
                if old != name and res.persona_id == ref.persona_id and res.pins == 0:
                    self._release(old)  # a replaced version: nobody uses it, we hold the lock
        except BaseException:
            self._release(name)
            raise
        return name

    def _checked_weights(self, spec: AdapterSpec):
        """The adapter's tensors after the full check; or, for a file this engine already
        accepted (same sha256, config and metadata) whose header still lists exactly the
        accepted tensors, its header, from which the pool reads straight into the slot."""
        key = checked_key(spec)
        with self._checked_lock:
            layout = self._checked.get(key)
        if layout is not None and self.info.device == "cpu":  # preadv fills CPU memory only
            weights = WeightsFile.read_header(spec.folder / "adapter_model.safetensors")
            if weights.layout_digest() == layout:
                with self._checked_lock:
                    if key in self._checked:
                        self._checked.move_to_end(key)
                return weights
        tensors = check_compatible(spec, self._shapes, self.info)
        with self._checked_lock:
            self._checked[key] = layout_of(tensors)
            while len(self._checked) > 256:
                self._checked.popitem(last=False)
        return tensors

    def _evict_lru(self) -> None:
        """Free the least recently used slot that no group row points at."""
        victim = next((name for name, res in self._resident.items() if res.pins == 0), None)
        if victim is None:
            raise ChorusError(
                f"All {self.max_resident} adapter slots are in use by the group being decoded; "
                "send fewer personas at once or raise --max-resident-adapters."
            )
        self._release(victim)

    def _release(self, name: str) -> None:
        res = self._resident.pop(name, None)
        if res and self._latest.get(res.persona_id) == name:
            del self._latest[res.persona_id]
        self.pool.release(name)
        self._publish()

    def forget(self, persona_id: str) -> None:
        """Drop a persona's resident adapters (deleted persona, detached adapter)."""
        with self._lock:
            for name, res in list(self._resident.items()):
                if res.persona_id == persona_id:
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
        self._publish()

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
            ids = on_model(self.model, [input_ids])
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
            self._publish()
            return dict(stats)

    def generate_group(self, requests: list[tuple[list[int], AdapterRef | None]], settings: GenerationSettings) -> list[str]:
        """Greedy replies for several personas decoded together in one batch.

        The base model's 4-bit matmuls serve all rows at once, and each row applies its
        own adapter through the lean LoRA forwards (core/engine/lora_fast.py), within bf16
        rounding of peft's mixed-adapter batches (`adapter_names`); those are the fallback
        when a slot has layers the lean forward does not serve. Every row's slot is pinned
        from its load to the end of the group, so a later row's load (another version of
        the same persona, a refill) never takes a slot a row points at. Greedy only:
        sampled rows would share one random stream, and a reply must not depend on who
        else was in the batch. No feature of the app calls this yet (bench/run.py does).
        """
        if settings.temperature > 0:
            raise ChorusError("Grouped decoding is greedy only; use temperature 0.")
        distinct = {(r.persona_id, r.sha256 or str(r.folder)) for _, r in requests if r is not None}
        if len(distinct) > self.max_resident:
            raise ChorusError(
                f"A group can hold at most {self.max_resident} distinct adapters (--max-resident-adapters); "
                f"this one has {len(distinct)}."
            )
        with self._lock:
            names: list = []
            try:
                for _, ref in requests:
                    names.append(self.ensure_adapter(ref, pin=True) if ref is not None else None)
                return self._decode_group(requests, names, settings)
            finally:
                self.unpin([n for n in names if n is not None])

    def _decode_group(self, requests, names, settings) -> list[str]:
        import torch

        width = max(len(ids) for ids, _ in requests)
        pad = self.tokenizer.pad_token_id
        batch = on_model(self.model, [[pad] * (width - len(ids)) + list(ids) for ids, _ in requests])
        mask = on_model(self.model, [[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in requests])
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
        self._publish()
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    def _publish(self) -> None:
        """Replace the status snapshot (called, under the generation lock or at start,
        whenever what it shows changes). Readers take the reference without any lock:
        rebinding an attribute is atomic, and a published snapshot is never changed."""
        self._snapshot = {
            **self._info,
            "resident_adapters": tuple(r.persona_id for r in self._resident.values()),
            "max_resident_adapters": self.max_resident,
            "context_limit": self.context_limit,
            "last_switch": dict(self.last_switch),
            "last_generation": dict(self.last_generation),
            "fast_paths": {**self.fast_paths, "off": dict(self.fast_paths["off"]), "declined": dict(self.fast_paths.get("declined", {}))},
        }

    def status(self) -> dict:
        """The engine's figures for the status line, from the snapshot: never waits for a
        reply in progress. The caller gets its own copy."""
        snap = self._snapshot
        out = {**snap, "resident_adapters": list(snap["resident_adapters"])}
        for key in ("last_switch", "last_generation", "fast_paths"):
            out[key] = dict(snap[key])
        return out
