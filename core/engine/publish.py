"""Publishing persona adapters into the folder a remote engine server reads.

A published adapter is `<folder>/<persona id>-<first 12 hex of its sha256>/`: peft's two
files, with `base_model_name_or_path` set to the name the server serves its base model
under (vLLM's filesystem resolver loads a folder only when that matches), and Chorus's own
`chorus_adapter.json` beside them (a Chorus server checks the base fingerprint from it).
Every folder is written under a hidden temp name and renamed into place, so a server never
reads a half-written adapter; removal renames it away first for the same reason. Nothing
is written anywhere but inside the folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from core.errors import AdapterIncompatible, ChorusError
from storage.adapter_files import CONFIG, META, WEIGHTS, fsync_path, sha256_file

# Persona ids are slugs; anything else could name a path outside the folder.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
SHA_PREFIX = 12


def published_name(persona_id: str, sha256: str) -> str:
    if not _SAFE_ID.match(persona_id or "") or ".." in persona_id:
        raise AdapterIncompatible(f"The persona id '{persona_id}' cannot name a published adapter folder.")
    return f"{persona_id}-{sha256[:SHA_PREFIX]}"


class AdapterShelf:
    """The shared adapter folder: what is published there, and publishing and removing."""

    def __init__(self, root: Path, served_name: str):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ChorusError(f"The adapter folder {root} (--engine-adapter-dir) does not exist; create it where the "
                              "engine server sees it too.")
        self.root = root.resolve()
        self.served_name = served_name

    def path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise AdapterIncompatible(f"'{name}' is not a folder name inside {self.root}.")
        return path

    def versions(self, persona_id: str) -> list[str]:
        """The names published for `persona_id`, whatever their checksum."""
        pattern = re.compile(rf"^{re.escape(persona_id)}-[0-9a-f]{{{SHA_PREFIX}}}$")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and pattern.match(p.name))

    def publish(self, persona_id: str, spec) -> str:
        """Publish the checked adapter `spec` (core.adapters.AdapterSpec) for `persona_id`;
        returns its name. An intact copy already there is kept as it is."""
        name = published_name(persona_id, spec.sha256)
        dest = self.path(name)
        if self._intact(dest, spec.sha256):
            return name
        tmp = self.root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            shutil.copyfile(spec.folder / WEIGHTS, tmp / WEIGHTS)
            config = dict(spec.config)
            config["base_model_name_or_path"] = self.served_name
            (tmp / CONFIG).write_text(json.dumps(config, indent=2))
            if (spec.folder / META).is_file():
                shutil.copyfile(spec.folder / META, tmp / META)
            for f in tmp.iterdir():
                fsync_path(f)
            if dest.exists():  # a damaged copy: moved aside, then replaced
                self._remove(dest)
            os.rename(tmp, dest)
            fsync_path(self.root)
        except OSError as exc:
            if self._intact(dest, spec.sha256):  # another Chorus published the same adapter meanwhile
                return name
            raise ChorusError(f"Could not publish the adapter into {self.root}: {exc.strerror or exc}.") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return name

    def unpublish(self, name: str) -> None:
        dest = self.path(name)
        if dest.exists():
            self._remove(dest)

    def _remove(self, dest: Path) -> None:
        gone = self.root / f".{dest.name}.gone-{uuid.uuid4().hex[:8]}"
        os.rename(dest, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def _intact(self, dest: Path, sha256: str) -> bool:
        weights = dest / WEIGHTS
        if not weights.is_file() or not (dest / CONFIG).is_file():
            return False
        try:
            base = json.loads((dest / CONFIG).read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            return False
        return base == self.served_name and sha256_file(weights) == sha256

