"""Which persona adapters a remote engine server holds, and getting them there.

An adapter reaches the server through the shared folder (core/engine/publish.py), then one
of two ways, whichever the server offers (found at connect time, `detect_mode`):

- "runtime": the server has `POST /v1/load_lora_adapter` (vLLM with
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, Chorus with --allow-adapter-loading). Chorus
  registers each adapter by its published name and holds at most `max_held` at once,
  unloading the least recently used one first (a server has fewer slots than a desktop
  may have personas).
- "resolver": no such endpoint; the server loads `<folder>/<name>/` itself the first time a
  request names it (vLLM's lora_filesystem_resolver, or Chorus's serve). The first use of
  each name is tried with a one-token request, so a server that cannot load it is found
  out while the chat can still answer from the card.

A replaced or deleted persona's adapter is unloaded and unpublished.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from core.adapters import DigestCache, check_base, inspect_adapter
from core.engine.base import AdapterRef
from core.engine.publish import AdapterShelf, published_name
from core.engine.remote_http import ServerClient
from core.errors import AdapterIncompatible

SETUP = "docs/scale-out.md says how to start the server"


def detect_mode(client: ServerClient) -> str:
    """'runtime' when the server takes adapters at run time, else 'resolver'. An empty
    load request is refused with 400 where the endpoint exists and 404 where it does not."""
    response = client.request("POST", "/load_lora_adapter", {"lora_name": "", "lora_path": ""})
    if response.status_code in (401, 403):
        raise client.refused(response)
    return "runtime" if response.status_code in (400, 422) else "resolver"


class ServerAdapters:
    def __init__(self, client: ServerClient, shelf: AdapterShelf | None, info, mode: str, max_held: int,
                 probe_ids: list[int]):
        self.client, self.shelf, self.info, self.mode = client, shelf, info, mode
        self.max_held = max(1, max_held)
        self.probe_ids = probe_ids
        self._held: OrderedDict[str, str] = OrderedDict()  # published name -> persona id, least recent first
        self._lock = threading.RLock()
        self._digests = DigestCache()
        self._pins: dict[str, int] = {}  # name -> replies streaming with it: never unloaded for room
        self._shown: tuple = ()  # (name, persona id) pairs for status(), which must not wait for the lock

    def check(self, folder, expected_sha256=None):
        spec = inspect_adapter(folder, expected_sha256, sha_cache=self._digests)
        check_base(spec, self.info)
        return spec

    def held(self) -> list[str]:
        """Persona ids whose adapters the server holds, least recently used first."""
        return [pid for _, pid in self._shown]

    def names(self) -> list[str]:
        return [name for name, _ in self._shown]

    def model_for(self, ref: AdapterRef) -> str:
        """The model name a request for `ref` sends: its published adapter, loaded."""
        with self._lock:
            try:
                return self._model_for(ref)
            finally:
                self._shown = tuple(self._held.items())

    def _model_for(self, ref: AdapterRef) -> str:
        if self.shelf is None:
            raise AdapterIncompatible("The engine server has no shared adapter folder, so persona adapters cannot reach it; "
                                      f"start Chorus with --engine-adapter-dir DIR, a folder the server reads too ({SETUP}).")
        with self._lock:
            if ref.sha256:
                name = published_name(ref.persona_id, ref.sha256)
                if name in self._held:
                    self._held.move_to_end(name)
                    return name
            spec = self.check(ref.folder, ref.sha256)
            name = published_name(ref.persona_id, spec.sha256)
            if name in self._held:
                self._held.move_to_end(name)
                return name
            self._drop_versions(ref.persona_id, keep=name)
            self.shelf.publish(ref.persona_id, spec)
            if self.mode == "runtime":
                self._register(name)
            else:
                self._try(name)
                while len(self._held) >= self.max_held:  # bookkeeping only: the server evicts by itself
                    self._held.popitem(last=False)
            self._held[name] = ref.persona_id
            return name

    def acquire(self, ref: AdapterRef) -> str:
        """`model_for`, and the name stays loaded until `release` (a reply streams with it)."""
        with self._lock:
            name = self.model_for(ref)
            self._pins[name] = self._pins.get(name, 0) + 1
            return name

    def release(self, name: str) -> None:
        with self._lock:
            left = self._pins.pop(name, 0) - 1
            if left > 0:
                self._pins[name] = left

    def _victim(self) -> str | None:
        """The least recently used name no reply streams with."""
        return next((n for n in self._held if not self._pins.get(n)), None)

    def lost(self, name: str) -> None:
        """The server does not know `name` (it restarted): registered again on next use."""
        with self._lock:
            self._held.pop(name, None)
            self._shown = tuple(self._held.items())

    def forget(self, persona_id: str) -> None:
        """Unload and unpublish every version of `persona_id` (deleted, or its adapter detached)."""
        if self.shelf is None:
            return
        with self._lock:
            try:
                self._drop_versions(persona_id, keep=None)
            finally:
                self._shown = tuple(self._held.items())

    def _drop_versions(self, persona_id: str, keep: str | None) -> None:
        for name, pid in list(self._held.items()):
            if pid == persona_id and name != keep:
                self._unload(name)
        for name in self.shelf.versions(persona_id):
            if name != keep:
                self.shelf.unpublish(name)

    def _register(self, name: str) -> None:
        while len(self._held) >= self.max_held and self._victim():
            self._unload(self._victim())
        for attempt in range(2):
            response = self.client.request("POST", "/load_lora_adapter",
                                           {"lora_name": name, "lora_path": str(self.shelf.path(name))})
            if response.status_code == 200 or "already" in response.text.lower():
                return
            if response.status_code in (401, 403):
                raise self.client.refused(response)
            full = any(w in response.text.lower() for w in ("max", "capacity", "full", "slot", "limit", "too many"))
            if attempt == 0 and full and self._victim():  # the server is full: make room and try once more
                self._unload(self._victim())
                continue
            why = self.client.refused(response)
            raise AdapterIncompatible(f"The engine server did not load the adapter {name}: {why}")

    def _unload(self, name: str) -> None:
        self._held.pop(name, None)
        if self.mode == "runtime":
            response = self.client.request("POST", "/unload_lora_adapter", {"lora_name": name})
            if response.status_code in (401, 403):
                raise self.client.refused(response)

    def _try(self, name: str) -> None:
        body = {"model": name, "prompt": self.probe_ids, "max_tokens": 1, "temperature": 0}
        response = self.client.request("POST", "/completions", body)
        if response.status_code == 200:
            return
        if response.status_code in (401, 403):
            raise self.client.refused(response)
        why = self.client.refused(response)
        raise AdapterIncompatible(
            f"The engine server cannot use the adapter {name} from {self.shelf.root}: {why} Start it with runtime adapter "
            "loading or with the filesystem resolver on that folder, and the same path on both machines "
            f"({SETUP}).")
