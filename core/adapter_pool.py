"""Peft adapter slots on the served model: created on demand, refilled in place.

peft's `add_adapter` builds 2 new Linear modules per targeted layer (420 on SmolLM2) and
walks the whole model: 300-700 ms on a 2-core CPU. An evicted adapter's slot already has
modules of the right shapes, so the next adapter with the same layout (rank and targeted
modules) is copied straight into it and its scaling set; a cold switch then costs little
more than reading the file. Slots are peft adapters named `slot0`, `slot1`...; which
persona fills a slot is the engine's business. At most `capacity` slots exist.

Switching sets every LoRA layer's active list directly: peft's set_adapter walks all
modules and resets requires_grad on every resident adapter, which serving never needs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

from core.adapters import AdapterSpec, parse_key
from core.errors import AdapterIncompatible, ChorusError


@dataclass
class _Slot:
    name: str
    signature: tuple
    modules: list  # the LoRA layers this slot's adapter targets
    busy: bool = True


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
        self.active: str | None = None

    # slots -------------------------------------------------------------------

    def place(self, spec: AdapterSpec, tensors: dict, evict: Callable[[], None]) -> str:
        """Put a checked adapter into a slot and return the slot's name. `evict` frees the
        least recently used slot when all are taken. The caller holds the engine lock."""
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
            modules = [root.get_submodule(path) for path in sorted(sig[-1])]
            slot = _Slot(name, sig, modules)
            self._slots[name] = slot
            self._copy(slot, tensors)
        except Exception as exc:
            self._slots.pop(name, None)
            if self.peft is not None and name in self.peft.peft_config:
                self._remove(name)
            if isinstance(exc, ChorusError):
                raise
            raise AdapterIncompatible(f"The adapter could not be loaded into the model: {exc}.") from None
        self._restore_active()
        return name

    def _fill(self, slot: _Slot, spec: AdapterSpec, tensors: dict) -> None:
        from peft import LoraConfig

        self._copy(slot, tensors)
        if sig_alpha_free(slot.signature):
            rslora = slot.signature[1]
            for module in slot.modules:
                r = module.r[slot.name]
                module.lora_alpha[slot.name] = spec.alpha
                module.scaling[slot.name] = spec.alpha / (math.sqrt(r) if rslora else r)
        config = LoraConfig.from_pretrained(str(spec.folder))
        config.inference_mode = True
        self.peft.peft_config[slot.name] = config

    def _copy(self, slot: _Slot, tensors: dict) -> None:
        """Copy every tensor into the slot; each targeted module must get both its matrices,
        or a refilled slot would keep a stale matrix of its previous adapter."""
        import torch

        root = self.peft.base_model.model
        placed = 0
        with torch.no_grad():
            for key, tensor in tensors.items():
                module_path, kind = parse_key(key)
                holder = getattr(root.get_submodule(module_path), kind)
                target = holder[slot.name] if isinstance(holder, torch.nn.ParameterDict) else holder[slot.name].weight
                if tuple(target.shape) != tuple(tensor.shape):
                    raise AdapterIncompatible(f"The adapter tensor '{key}' does not fit its module.")
                target.copy_(tensor.to(target.dtype))
                placed += 1
        expected = 2 * len(slot.modules)
        if placed != expected:
            raise AdapterIncompatible(f"The adapter's weights file lacks {expected - placed} of its {expected} LoRA matrices.")

    def _drop(self, name: str) -> None:
        self._slots.pop(name, None)
        self._remove(name)

    def _remove(self, name: str) -> None:
        self._layers = None
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
        return self._layers

    def activate(self, name: str | None) -> None:
        """Make every LoRA layer run slot `name` (None: the bare base model)."""
        if name == self.active or self.peft is None:
            self.active = name
            return
        active = [name] if name is not None else []
        for layer in self.layers():
            layer._active_adapter = active
        if name is not None:
            self.peft.base_model.active_adapter = name
        self.active = name

    def slot_count(self) -> int:
        return len(self._slots)


def sig_alpha_free(sig: tuple) -> bool:
    """True when the slot's per-module alpha can be re-derived from the adapter's alpha."""
    return sig[5] is None
