"""The inference engine: one base model, its tokenizer, and the persona adapters resident
beside it.

Every request names the adapter it wants (or none, for the bare base); there is no
global "current persona" that another session could change under it. Adapters are
checked and read from disk outside the lock, injected under it, and published only once
complete, so no request ever runs on a half-loaded adapter. Every reply is a request to
the scheduler (core/engine/scheduler.py): requests waiting for the model are decoded
together as one batch, each row with its own adapter, its own sampling settings and its
own seeded random stream, so a row gives what it gives alone (bitwise where the kernels
allow, tests/test_batching.py says the tolerance) and voices never mix. Each row pins its
slot while it runs; injection and eviction take the engine lock, which the decode thread
holds around each forward.

The LoRA layers run the lean forwards of core/engine/lora_fast.py (peft's arithmetic; what is
bitwise peft and what is within bf16 rounding is said there); a self-check at start compares
the one-token kernels with the reference ones on this machine and turns them off where they
disagree (`status()["fast_paths"]`). An evicted adapter's file, once checked and while
unchanged, is read straight back into its slot (core/engine/adapter_io.py says what is
verified when). `status()` and `resident()` serve a snapshot and never wait for a reply.
Generation runs on the CPU threads `default_threads` picks. docs/performance.md has the
measurements.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from core.adapters import AdapterSpec, DigestCache, check_compatible, inspect_adapter, module_shapes
from core.device import model_device
from core.engine.adapter_io import WeightsFile, checked_key, layout_of
from core.engine import compute_dtype, cpu_4bit
from core.engine.adapter_pool import AdapterPool
from core.engine.base import DEFAULT_CONTEXT_LIMIT, AdapterRef, GenerationSettings
from core.engine.model_hooks import DecodeThreads, _dense_head_input, default_threads
from core.engine.scheduler import Request, Scheduler, SlotsBusy
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
        max_batch: int = 8,  # rows decoded together at most
        kv_budget_bytes: int = 512 * 2**20,  # key/value cache the rows of a batch may take (a lone row always runs)
        dense_budget: int | None = None,  # bytes of weight copies (core/engine/cpu_4bit.py); None: its default
        compute=None,  # the compute_dtype.Choice the model was loaded with, for the status line
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
        # Before any forward: bitsandbytes repacks its weights at the first one.
        self.cpu_4bit = cpu_4bit.Cpu4bit().install(model, dense_budget if dense_budget is not None else cpu_4bit.budget_bytes(),
                                          (decode, prompt))
        self.fast_paths = self._self_check()
        if compute is not None:
            self.fast_paths["compute"] = compute.as_dict()
            self.fast_paths["summary"] += f"; computes in {compute.why}"
        self._info = info.as_dict()
        self._snapshot: dict = {}
        # Every reply goes through the scheduler's queue and is decoded in batches; the
        # batch is capped by rows and by the key/value cache's bytes.
        self.scheduler = Scheduler(self, max_batch=max_batch, kv_budget_bytes=kv_budget_bytes)
        self._publish()

    @classmethod
    def load(cls, source: ModelSource, *, max_resident: int = 8, quantize: bool = True, context_limit=None,
             **options) -> "Engine":
        """options: max_batch, kv_budget_bytes, threads, dense_budget (see __init__). The
        model computes in the dtype core/engine/compute_dtype.py picks for this machine."""
        compute = compute_dtype.for_source(source, context_limit, quantize, options.get("threads") or default_threads())
        model, tokenizer, info = load_base(source, quantize=quantize, context_limit=context_limit, dtype=compute.dtype)
        return cls(model, tokenizer, info, max_resident=max_resident, context_limit=context_limit, compute=compute,
                   **options)

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
            timed = None
            if getattr(self.model.config, "_attn_implementation", None) == attention.NAME:
                why = attention.self_check(self.model.config)
                if why:
                    off["decode_attention"] = why
                    self.model.set_attn_implementation("sdpa")
                else:
                    timed = attention.keep_if_faster(self.model, self.threads.decode)
        finally:
            torch.set_num_threads(before)
        summary = "on" if not off else "off (self-check: " + "; ".join(off.values()) + ")"
        summary += f"; 4-bit layers: {self.cpu_4bit.summary}"
        if timed is not None:
            summary += f"; decode attention: {'Chorus' if timed['used'] == 'chorus' else 'sdpa'}, {timed['why']}"
        if declined:
            summary += " (declined: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in declined.items()) + ")"
        return {"ok": not off, "summary": summary, "off": off, "declined": declined, "cpu_4bit": self.cpu_4bit.as_dict(),
                "attention": timed, "ms": round((time.perf_counter() - t0) * 1000, 2)}

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

    def ensure_adapter(self, ref: AdapterRef, *, pin: bool = False, wait: bool = True) -> str:
        """Make `ref` resident (checking it first) and return the slot that serves it.
        pin=True: the slot stays until `unpin` (a row being decoded points at it).
        When every slot is pinned by rows being decoded, an unpinned call waits for a row
        to leave (wait=False: raises SlotsBusy at once, as it always does when the pins
        are not the scheduler's)."""
        while True:
            try:
                return self._ensure(ref, pin)
            except SlotsBusy:
                if pin or not wait or not self.scheduler.wait_for_leave(timeout=1.0):
                    raise

    def _ensure(self, ref: AdapterRef, pin: bool) -> str:
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
            raise SlotsBusy(
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

        The reply is decoded in a batch with whatever else waits for the model
        (core/engine/scheduler.py). `result`, if given, is filled once the reply ends: tokens,
        seconds, tok_s, stopped, prompt_tokens, finish_reason ("stop": end of sequence or a
        stop string; "length": max tokens; "stopped": the stop event) and batch (the largest
        batch the reply was decoded in). Closing the generator stops the reply.
        """
        stop = stop or threading.Event()
        if adapter is not None:
            self._preload(adapter)
        if settings.seed is None:
            settings.seed = random.randrange(2**31)
        req = Request(input_ids, adapter, settings, stop, result)
        self.scheduler.submit([req])
        yield from self.scheduler.pieces(req)

    def generate(self, input_ids, adapter, settings, stop=None, result=None) -> str:
        return "".join(self.stream(input_ids, adapter, settings, stop, result))

    def _preload(self, ref: AdapterRef) -> None:
        """Read and check an adapter on the caller's thread, not the decode thread; a refused
        one fails here. When every slot serves a running row, it loads once one is free."""
        try:
            self.ensure_adapter(ref, wait=False)
        except SlotsBusy:
            pass

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no reply runs or waits for the model; False if `timeout` passed first."""
        return self.scheduler.idle(timeout)

    def _lean(self, group) -> bool:
        """Whether the group's rows ran the lean LoRA forwards (not peft's own)."""
        if len(group) > 1:
            return bool(self.scheduler.decoder.lean)
        slot = group[0].slot
        return slot is None or self.pool.peft is None or self.pool.fast.covers(slot, self.pool.layers())

    def _record(self, stats: dict) -> None:
        """A reply ended: its figures become the status line's last generation."""
        with self._lock:
            self.last_generation = dict(stats)
            self._publish()

    def generate_group(self, requests: list[tuple[list[int], AdapterRef | None]], settings: GenerationSettings) -> list[str]:
        """Greedy replies for several personas, submitted together so they form one batch.

        The base model's 4-bit matmuls serve all rows at once, and each row applies its
        own adapter through the lean LoRA forwards (core/engine/lora_fast.py), within bf16
        rounding of peft's mixed-adapter batches (`adapter_names`); those are the fallback
        when a slot has layers the lean forward does not serve. Every row's slot is pinned
        from admission until the row ends. Greedy only (bench/run.py and the tests use it
        to compare a group with its rows alone); sampled replies go through `stream`.
        """
        if settings.temperature > 0:
            raise ChorusError("Grouped decoding is greedy only; use temperature 0.")
        distinct = {(r.persona_id, r.sha256 or str(r.folder)) for _, r in requests if r is not None}
        if len(distinct) > self.max_resident:
            raise ChorusError(
                f"A group can hold at most {self.max_resident} distinct adapters (--max-resident-adapters); "
                f"this one has {len(distinct)}."
            )
        for _, ref in requests:
            if ref is not None:
                self._preload(ref)
        if settings.seed is None:
            settings.seed = random.randrange(2**31)
        group: list[Request] = []
        for ids, ref in requests:
            group.append(Request(ids, ref, replace(settings), threading.Event(), {}, group))
        t0 = time.perf_counter()
        self.scheduler.submit(group)
        texts = ["".join(self.scheduler.pieces(req)) for req in group]
        elapsed = time.perf_counter() - t0
        tokens = sum(req.result.get("tokens", 0) for req in group)
        self._record({
            "tokens": tokens,
            "seconds": round(elapsed, 3),
            "tok_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
            "group": len(requests),
            "batch": max(req.result.get("batch", 0) for req in group),
            "lean_rows": self._lean(group),
        })
        return texts

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
        waiting, running = self.scheduler.counts
        out = {**snap, "resident_adapters": list(snap["resident_adapters"]), "queue": waiting, "running": running}
        for key in ("last_switch", "last_generation", "fast_paths"):
            out[key] = dict(snap[key])
        return out
