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
import re
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from core.adapters import AdapterSpec, check_compatible, inspect_adapter, module_shapes, parse_key
from core.errors import AdapterIncompatible, ChorusError
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


def _adapter_name(persona_id: str, sha: str) -> str:
    # peft keeps adapters in ModuleDicts, whose keys cannot contain dots.
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', persona_id)}__{sha[:12]}"


class _StopOnEvent:
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, model, tokenizer, info: ModelInfo, *, max_resident: int = 8, context_limit: int | None = None):
        if max_resident < 1:
            raise ChorusError("--max-resident-adapters must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.max_resident = max_resident
        self.context_limit = min(info.context_length, context_limit or DEFAULT_CONTEXT_LIMIT)
        self.peft = None  # the PeftModel wrapper, created with the first adapter
        self._shapes = module_shapes(model)
        self._lock = threading.RLock()
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._by_persona: dict[str, str] = {}
        self._active: str | None = None  # the adapter LoRA layers run, None for the bare base
        self._layers: list | None = None
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
        """Make `ref` resident (checking it first) and return its peft adapter name."""
        with self._lock:
            name = self._resident_for(ref)
            if name is not None:
                self._resident.move_to_end(name)
                return name
        spec = inspect_adapter(ref.folder, ref.sha256)
        tensors = check_compatible(spec, self._shapes, self.info)
        name = _adapter_name(ref.persona_id, spec.sha256)
        with self._lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                return name
            self._inject(name, spec, tensors)
            old = self._by_persona.get(ref.persona_id)
            st = (spec.folder / "adapter_model.safetensors").stat()
            self._resident[name] = _Resident(name, ref.persona_id, spec.sha256, spec, (st.st_size, st.st_mtime_ns))
            self._by_persona[ref.persona_id] = name
            if old and old != name:
                self._delete(old)  # a replaced version: nobody can be using it, we hold the lock
            while len(self._resident) > self.max_resident:
                self._delete(next(iter(self._resident)))
        return name

    def _inject(self, name: str, spec: AdapterSpec, tensors: dict) -> None:
        """Add adapter `name` to the model and copy its checked tensors in place.

        peft's set_peft_model_state_dict calls model.state_dict(), which on these CPUs
        unpacks bitsandbytes' packed 4-bit weights; repacking them later rounds the
        block scales differently, so the base model's outputs would drift with every
        load. Writing the LoRA tensors straight into their modules avoids that.
        """
        import torch
        from peft import LoraConfig, PeftModel

        config = LoraConfig.from_pretrained(str(spec.folder))
        config.inference_mode = True
        try:
            self._layers = None
            self._active = "?"  # peft may have changed which adapter is active: force the next switch
            if self.peft is None:
                self.peft = PeftModel(self.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            root = self.peft.base_model.model
            expected = {n for n, _ in self.peft.named_parameters() if f".{name}" in n and "lora_" in n}
            placed = set()
            with torch.no_grad():
                for key, tensor in tensors.items():
                    module_path, kind = parse_key(key)
                    holder = getattr(root.get_submodule(module_path), kind)
                    target = holder[name] if isinstance(holder, torch.nn.ParameterDict) else holder[name].weight
                    if tuple(target.shape) != tuple(tensor.shape):
                        raise AdapterIncompatible(f"The adapter tensor '{key}' does not fit its module.")
                    target.copy_(tensor.to(target.dtype))
                    placed.add(id(target))
            missing = len(expected) - len(placed)
            if missing:
                raise AdapterIncompatible(f"The adapter's weights file lacks {missing} of its {len(expected)} LoRA matrices.")
        except Exception as exc:
            if self.peft is not None and name in self.peft.peft_config:
                self._remove_from_peft(name)
            if isinstance(exc, ChorusError):
                raise
            raise AdapterIncompatible(f"The adapter could not be loaded into the model: {exc}.") from None
        self.peft.eval()

    def _remove_from_peft(self, name: str) -> None:
        self._layers = None
        self._active = "?"
        if len(self.peft.peft_config) > 1:
            if name in (self.peft.active_adapters or []):
                other = next(n for n in self.peft.peft_config if n != name)
                self.peft.set_adapter(other)
            self.peft.delete_adapter(name)
        # peft cannot delete its last adapter; an unreferenced one costs one slot until replaced.

    def _delete(self, name: str) -> None:
        res = self._resident.pop(name, None)
        if res and self._by_persona.get(res.persona_id) == name:
            del self._by_persona[res.persona_id]
        if self.peft is not None and name in self.peft.peft_config:
            self._remove_from_peft(name)

    def forget(self, persona_id: str) -> None:
        """Drop a persona's resident adapter (deleted persona, detached adapter)."""
        with self._lock:
            name = self._by_persona.get(persona_id)
            if name:
                self._delete(name)

    # generation --------------------------------------------------------------

    def prompt_budget(self, max_new_tokens: int) -> int:
        return max(self.context_limit - max_new_tokens, 64)

    def _lora_layers(self) -> list:
        """Every LoRA layer in the model, collected once per change of the adapter set."""
        if self._layers is None:
            from peft.tuners.lora import LoraLayer

            self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        return self._layers

    def _activate(self, name: str | None) -> None:
        """Point every LoRA layer at adapter `name` (None: none, the bare base).

        peft's set_adapter walks all modules and resets requires_grad on every resident
        adapter's weights (14.7 ms for 210 layers); serving needs only the active list,
        which is what LoRA layers read in forward. An empty list is the bare base.
        """
        if name == self._active:
            return
        t0 = time.perf_counter()
        if self.peft is not None:
            active = [name] if name is not None else []
            for layer in self._lora_layers():
                layer._active_adapter = active
            if name is not None:
                self.peft.base_model.active_adapter = name
        self._active = name
        self.last_switch = {
            "adapter": name,
            "at": time.time(),
            "ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def stream(
        self,
        input_ids: list[int],
        adapter: AdapterRef | None,
        settings: GenerationSettings,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text piece by piece; setting `stop` ends it after the current token."""
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
                self._generate(input_ids, adapter, settings, streamer, stop)
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

    def _generate(self, input_ids, adapter, settings, streamer, stop) -> None:
        import torch
        from transformers import StoppingCriteriaList

        with self._lock:
            name = self.ensure_adapter(adapter) if adapter is not None else None
            self._activate(name)
            device = next(self.model.parameters()).device
            ids = torch.tensor([input_ids], dtype=torch.long, device=device)
            sample = settings.temperature > 0
            kwargs = dict(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=settings.max_new_tokens,
                min_new_tokens=settings.min_new_tokens or None,
                do_sample=sample,
                repetition_penalty=settings.repetition_penalty,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
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
            self.last_generation = {
                "tokens": new_tokens,
                "seconds": round(elapsed, 3),
                "tok_s": round(new_tokens / elapsed, 1) if elapsed > 0 else None,
                "stopped": stop.is_set(),
            }

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
