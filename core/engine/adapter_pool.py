"""Peft adapter slots on the served model: created on demand, refilled in place.

peft's `add_adapter` builds 2 new Linear modules per targeted layer (420 on SmolLM2) and
walks the whole model: 300-700 ms on a 2-core CPU. An evicted adapter's slot already has
modules of the right shapes, so the next adapter with the same layout (rank and targeted
modules) is copied straight into it and its scaling set; a cold switch then costs little
more than reading the file. Each slot's matrices live in one contiguous buffer (the
parameters are views of it), which a file already checked once is read into directly
(core/engine/adapter_io.py); where exact, each layer's scale is folded into B (core/engine/lora_fast.py).
Slots are peft adapters named `slot0`, `slot1`...; which persona fills a slot is the
engine's business. At most `capacity` slots exist.

Switching sets every LoRA layer's active list directly: peft's set_adapter walks all
modules and resets requires_grad on every resident adapter, which serving never needs.
The layers themselves run the lean forwards of core/engine/lora_fast.py, which follow one
attribute (`fast.active`) and can give each row of a batch its own slot (`rows`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Callable

from core.adapters import AdapterSpec
from core.adapters import parse_key as _parse_key
from core.errors import AdapterIncompatible, ChorusError

parse_key = functools.lru_cache(maxsize=4096)(_parse_key)  # the same few hundred names, reload after reload


@dataclass
class _Slot:
    name: str
    signature: tuple
    modules: list  # the LoRA layers this slot's adapter targets
    busy: bool = True
    targets: dict | None = None  # (module path, lora kind) -> the parameter a saved tensor fills
    arena: object = None  # bytes (numpy uint8) of the one buffer all the slot's matrices live in
    offsets: dict | None = None  # (module path, lora kind) -> (byte offset, byte length) in it
    scales: list | None = None  # each module's alpha/r as its config gives it (before folding)


def signature(spec: AdapterSpec, tensors: dict) -> tuple:
    """What a slot's modules must match for an adapter to be copied into it."""
    cfg = spec.config
    alpha_pattern = cfg.get("alpha_pattern") or {}
    return (
        spec.rank,
        bool(cfg.get("use_rslora")),
        bool(cfg.get("fan_in_fan_out")),
        json.dumps(cfg.get("rank_pattern") or {}, sort_keys=True),
        json.dumps(alpha_pattern, sort_keys=True),
        spec.alpha if alpha_pattern else None,  # per-module alphas are only re-derived without a pattern
        frozenset(parse_key(k)[0] for k in tensors),
    )


class AdapterPool:
    def __init__(self, model, capacity: int):
        self.model = model
        self.capacity = capacity
        self.peft = None
        self._slots: dict[str, _Slot] = {}
        self._layers: list | None = None
        self._identity = None  # the nn.Identity every slot's dropout-0 layers share
        self.active: str | None = None
        from core.engine.lora_fast import FastLora

        self.fast = FastLora()

    # slots -------------------------------------------------------------------

    def place(self, spec: AdapterSpec, tensors, evict: Callable[[], None]) -> str:
        """Put a checked adapter into a slot and return the slot's name. `tensors` is the
        dict of checked tensors or a WeightsFile to read them from. `evict` frees the least
        recently used slot when all are taken. The caller holds the engine lock."""
        sig = signature(spec, tensors)
        slot = self._free_slot(sig)
        while slot is None and len(self._slots) >= self.capacity and not any(not s.busy for s in self._slots.values()):
            evict()
        if slot is None:
            slot = self._free_slot(sig)
        if slot is not None:
            try:
                self._fill(slot, spec, tensors)
            except Exception:
                slot.busy = False
                raise
            return slot.name
        stale = next((s for s in self._slots.values() if not s.busy), None)
        name = self._create(sig, spec, tensors)
        if stale is not None and len(self._slots) > self.capacity:
            # Dropped after the new slot exists: peft cannot delete its only adapter.
            self._drop(stale.name)
        return name

    def _free_slot(self, sig) -> _Slot | None:
        for slot in self._slots.values():
            if not slot.busy and slot.signature == sig:
                slot.busy = True
                return slot
        return None

    def release(self, name: str) -> None:
        """The slot's adapter is no longer wanted; keep its memory for the next one."""
        slot = self._slots.get(name)
        if slot is not None:
            slot.busy = False
        if self.active == name:
            self.activate(None)

    def _new_name(self) -> str:
        i = 0
        taken = set(self._slots) | set(self.peft.peft_config if self.peft is not None else ())
        while f"slot{i}" in taken:
            i += 1
        return f"slot{i}"

    def _create(self, sig, spec: AdapterSpec, tensors: dict) -> str:
        from peft import LoraConfig, PeftModel

        name = self._new_name()
        config = LoraConfig.from_pretrained(str(spec.folder))
        config.inference_mode = True
        self._layers = None
        try:
            if self.peft is None:
                self.peft = PeftModel(self.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            self.peft.eval()
            root = self.peft.base_model.model
            paths = sorted(sig[-1])
            modules = [root.get_submodule(path) for path in paths]
            self._share_dropout(name, modules)
            slot = _Slot(name, sig, modules, scales=[float(m.scaling[name]) for m in modules])
            self._slots[name] = slot
            self._make_arena(slot)
            self.fast.install(self.layers())
            self._load(slot, tensors)
        except Exception as exc:
            self._slots.pop(name, None)
            if self.peft is not None and name in self.peft.peft_config:
                self._remove(name)
            if isinstance(exc, ChorusError):
                raise
            raise AdapterIncompatible(f"The adapter could not be loaded into the model: {exc}.") from None
        self._restore_active()
        return name

    def _fill(self, slot: _Slot, spec: AdapterSpec, tensors) -> None:
        from peft import LoraConfig

        if sig_alpha_free(slot.signature):
            rslora = slot.signature[1]
            slot.scales = []
            for module in slot.modules:
                r = module.r[slot.name]
                module.lora_alpha[slot.name] = spec.alpha
                slot.scales.append(spec.alpha / (math.sqrt(r) if rslora else r))
        self._load(slot, tensors)
        config = LoraConfig.from_pretrained(str(spec.folder))
        config.inference_mode = True
        self.peft.peft_config[slot.name] = config

    def _share_dropout(self, name: str, modules: list) -> None:
        """peft gives every slot of every layer its own nn.Identity (dropout 0): 210 modules
        of some 2.5 KB each per slot on SmolLM2. One shared instance does the same."""
        import torch

        if self._identity is None:
            self._identity = torch.nn.Identity()
        for module in modules:
            dropout = getattr(module, "lora_dropout", None)
            if dropout is not None and type(dropout[name]) is torch.nn.Identity:
                dropout[name] = self._identity

    def _load(self, slot: _Slot, tensors) -> None:
        """Copy the adapter in, folding each module's scale into B where that is exact."""
        folds = self.fast.folds(slot.name, slot.modules, slot.scales)
        self._copy(slot, tensors, dict(zip(sorted(slot.signature[-1]), folds)))
        self.fast.load_scales(slot.name, slot.modules, [s / f for s, f in zip(slot.scales, folds)])

    def _copy(self, slot: _Slot, tensors, folds: dict) -> None:
        """Copy every tensor into the slot; each targeted module must get both its matrices,
        or a refilled slot would keep a stale matrix of its previous adapter. `tensors` is
        the dict of checked tensors, or a WeightsFile (core/engine/adapter_io.py) to read from."""
        import torch

        plan = self._plan(slot, tensors)
        for key, target in plan.items():
            shape = tuple(tensors[key].shape) if isinstance(tensors, dict) else tensors.shape(key)
            if tuple(target.shape) != shape:
                raise AdapterIncompatible(f"The adapter tensor '{key}' does not fit its module.")
        expected = 2 * len(slot.modules)
        if len(plan) != expected:
            raise AdapterIncompatible(f"The adapter's weights file lacks {expected - len(plan)} of its {expected} LoRA matrices.")
        with torch.no_grad():
            if isinstance(tensors, dict):
                for key, target in plan.items():
                    target.copy_(tensors[key])  # copy_ converts the dtype in the same pass
            else:
                tensors.read_into(plan, self._views(slot, plan))
            for key, target in plan.items():
                path, kind = parse_key(key)
                if kind == "lora_B" and folds.get(path, 1.0) != 1.0:
                    target.mul_(folds[path])

    def _plan(self, slot: _Slot, keys) -> dict:
        """{saved tensor name: slot parameter}."""
        targets = self._targets(slot)
        plan = {}
        for key in keys:
            target = targets.get(parse_key(key))
            if target is None:
                raise AdapterIncompatible(f"The adapter tensor '{key}' has no place in this slot.")
            plan[key] = target
        return plan

    def _views(self, slot: _Slot, plan: dict) -> dict | None:
        """Byte views of the planned parameters inside the slot's arena (None: no arena)."""
        if slot.arena is None:
            return None
        return {key: slot.arena[o : o + n] for key, (o, n) in ((k, slot.offsets[parse_key(k)]) for k in plan)}

    def _make_arena(self, slot: _Slot) -> None:
        """Move the slot's matrices into one contiguous buffer, the parameters becoming
        views of it: one allocation per slot (no heap fragments left when it goes), its
        exact size, and a file read lands in it without a view per tensor."""
        import torch

        targets = self._targets(slot)
        params = [targets[k] for k in sorted(targets)]
        if not params or len({p.dtype for p in params}) != 1 or params[0].device.type != "cpu":
            return  # file reads land in CPU memory; CUDA slots keep peft's own tensors
        arena = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype)
        offsets, at = {}, 0
        with torch.no_grad():
            for key in sorted(targets):
                param = targets[key]
                n = param.numel()
                view = arena[at : at + n].view(param.shape)
                view.copy_(param)
                param.data = view
                offsets[key] = (at * arena.element_size(), n * arena.element_size())
                at += n
        from core.engine.adapter_io import byte_view

        slot.arena, slot.offsets = byte_view(arena), offsets

    def _targets(self, slot: _Slot) -> dict:
        """(module path, kind) -> parameter, for every matrix of the slot (looked up once)."""
        import torch

        if slot.targets is None:
            root = self.peft.base_model.model
            targets = {}
            for path in sorted(slot.signature[-1]):
                module = root.get_submodule(path)
                for kind in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
                    holder = getattr(module, kind, None)
                    if holder is None or slot.name not in holder:
                        continue
                    param = holder[slot.name] if isinstance(holder, torch.nn.ParameterDict) else holder[slot.name].weight
                    targets[(path, kind)] = param
            slot.targets = targets
        return slot.targets

    def _drop(self, name: str) -> None:
        self._slots.pop(name, None)
        self._remove(name)

    def _remove(self, name: str) -> None:
        self._layers = None
        self.fast.remove_slot(name)
        if len(self.peft.peft_config) > 1:
            if name in (self.peft.active_adapters or []):
                self.peft.set_adapter(next(n for n in self.peft.peft_config if n != name))
            self.peft.delete_adapter(name)
        self._restore_active()

    def _restore_active(self) -> None:
        # peft's add/delete may have reset layers' active lists; put ours back.
        wanted, self.active = self.active, "?"
        self.activate(wanted if wanted in self._slots else None)

    # activation ----------------------------------------------------------------

    def layers(self) -> list:
        if self._layers is None:
            from peft.tuners.lora import LoraLayer

            self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
            self.fast.install(self._layers)
        return self._layers

    def activate(self, name: str | None) -> None:
        """Make every LoRA layer run slot `name` (None: the bare base model)."""
        if name == self.active or self.peft is None:
            self.active = self.fast.active = name
            return
        self.fast.active = name
        active = [name] if name is not None else []
        for layer in self.layers():
            layer._active_adapter = active
        if name is not None:
            self.peft.base_model.active_adapter = name
        self.active = name

    def slot_count(self) -> int:
        return len(self._slots)

    def rows(self, names: list):
        """Context manager: row i of the batch runs slot names[i] (None: the bare base).
        Yields False when a slot has layers the lean forward does not serve (FastLora.rows)."""
        return self.fast.rows(names, self.layers() if self.peft is not None else [])

    def resident_bytes(self) -> dict:
        """Bytes of LoRA matrices each slot holds (what a resident adapter costs in tensors)."""
        out = {}
        for name, slot in self._slots.items():
            seen = {}
            for param in self._targets(slot).values():
                storage = param.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            out[name] = sum(seen.values())
        return out


def sig_alpha_free(sig: tuple) -> bool:
    """True when the slot's per-module alpha can be re-derived from the adapter's alpha."""
    return sig[5] is None
