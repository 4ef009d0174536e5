"""Adapters that other programs hand to `python app.py serve` at run time, by name, the
way vLLM takes them: `load` / `unload` (POST /v1/load_lora_adapter and
/v1/unload_lora_adapter), and `lookup`, which also loads `<folder>/<name>/` on demand
when a request names an unknown adapter whose config says it was made for the served
model (vLLM's lora_filesystem_resolver). A request whose model is such a name gets that
adapter and no card.

Off unless `serve` is started with --allow-adapter-loading DIR; then only folders whose
real path (links resolved) lies inside DIR are read, and only as peft LoRA in safetensors
(core/adapters.py refuses anything else before it touches the model).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from core.engine.base import AdapterRef
from core.errors import AdapterCorrupt, AdapterIncompatible, ChorusError, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
PREFIX = "served:"  # the engine's persona id for an adapter loaded by name: never a real persona's id


class AdapterLoadRefused(ChorusError):
    """A load request that names a folder outside the allowed one, or a bad adapter."""


class ServedAdapters:
    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ChorusError(f"--allow-adapter-loading {root}: no such folder.")
        self.root = root.resolve()
        self._refs: dict[str, AdapterRef] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._refs)

    def _inside(self, path: str | Path) -> Path:
        real = (self.root / Path(path).expanduser()).resolve()
        if real == self.root or not real.is_relative_to(self.root):
            raise AdapterLoadRefused(f"Adapters are loaded only from folders inside {self.root}.")
        if not real.is_dir():
            raise AdapterLoadRefused(f"There is no adapter folder at {path}.")
        return real

    def load(self, name: str, path: str, engine) -> AdapterRef:
        """Check the folder and serve it as `name` (checked against the running model)."""
        if not name or not path:
            raise AdapterLoadRefused("Both 'lora_name' and 'lora_path' must be provided.")
        if not _NAME.match(name) or ".." in name:
            raise AdapterLoadRefused(f"'{name}' cannot name an adapter: letters, digits, '-', '_' and '.' only.")
        with self._lock:
            if name in self._refs:
                raise AdapterLoadRefused(f"The lora adapter '{name}' has already been loaded.")
        folder = self._inside(path)
        try:
            spec = engine.check_adapter(folder)
        except (AdapterIncompatible, AdapterCorrupt) as exc:
            raise AdapterLoadRefused(str(exc)) from None
        ref = AdapterRef(PREFIX + name, folder, spec.sha256)
        with self._lock:
            self._refs[name] = ref
        return ref

    def unload(self, name: str, engine) -> None:
        with self._lock:
            ref = self._refs.pop(name or "", None)
        if ref is None:
            raise NotFound(f"The lora adapter '{name}' cannot be found.")
        engine.forget(ref.persona_id)

    def lookup(self, name: str, engine) -> AdapterRef | None:
        """The adapter served as `name`: loaded before, or found in the folder now if its
        config names the served model as its base. None when there is no such adapter."""
        with self._lock:
            ref = self._refs.get(name)
        if ref is not None or not _NAME.match(name or "") or ".." in name:
            return ref
        candidate = (self.root / name).resolve()
        if not candidate.is_dir():
            return None
        candidate = self._inside(name)  # a link out of the folder is refused before anything is read
        try:
            config = json.loads((candidate / "adapter_config.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA" \
                or config.get("base_model_name_or_path") != engine.info.name:
            return None
        try:
            return self.load(name, name, engine)
        except AdapterLoadRefused as exc:
            if "already" in str(exc):  # another request loaded it meanwhile
                return self._refs.get(name)
            raise
