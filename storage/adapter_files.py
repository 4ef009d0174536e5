"""The adapter file store: `$CHORUS_HOME/adapters/<persona-id>/v<version>/`, one folder per
version, written to a temp folder and renamed into place, registered in the same step.

A folder describes itself: peft's `adapter_config.json` and `adapter_model.safetensors`,
plus `chorus_adapter.json` (base model and fingerprint) and, for trained adapters, the
training config, log and evaluation. Old versions are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from storage.db import DatabaseHandle, now, save_failed
from storage.errors import NotFound

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
META = "chorus_adapter.json"
# Files an adapter folder may carry; anything else in an upload is left behind.
KEPT_FILES = (CONFIG, WEIGHTS, META, "training_config.json", "training_log.jsonl", "evaluation.json", "README.md")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or a folder's entries to the disk (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AdapterFiles:
    def __init__(self, handle: DatabaseHandle, home: Path):
        self._h = handle
        self.home = Path(home)
        self.root = self.home / "adapters"

    def folder(self, row: dict) -> Path:
        return self.home / row["folder"]

    def get(self, adapter_id: int) -> dict:
        rows = list(self._h.db["adapters"].rows_where("id = ?", [adapter_id]))
        if not rows:
            raise NotFound(f"There is no adapter {adapter_id}.")
        row = dict(rows[0])
        row["target_modules"] = json.loads(row["target_modules"] or "[]")
        return row

    def versions(self, persona_id: str) -> list[dict]:
        ids = [r["id"] for r in self._h.db["adapters"].rows_where("persona_id = ?", [persona_id], order_by="version")]
        return [self.get(i) for i in ids]

    def add_version(self, persona_id: str, source: Path, meta: dict) -> dict:
        """Copy an adapter folder in as the persona's next version and make it current.

        `meta` holds base_model, base_fingerprint, rank, alpha, target_modules (already
        checked by the engine). The folder appears complete or not at all, and the
        database row and the persona's pointer change in one transaction.
        """
        source = Path(source)
        dest_parent = self.root / persona_id
        dest_parent.mkdir(parents=True, exist_ok=True)
        tmp = dest_parent / f".tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name in KEPT_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
                    with open(tmp / name, "rb") as fh:
                        os.fsync(fh.fileno())
            sha = sha256_file(tmp / WEIGHTS)
            size = sum(p.stat().st_size for p in tmp.iterdir())
            with self._h.transaction() as db:
                existing = [r["version"] for r in db["adapters"].rows_where("persona_id = ?", [persona_id])]
                version = max(existing, default=0) + 1
                dest = dest_parent / f"v{version}"
                if dest.exists():  # leftover of a crash between rename and commit
                    shutil.rmtree(dest)
                os.rename(tmp, dest)
                fsync_path(dest_parent)
                adapter_id = db["adapters"].insert(
                    {
                        "persona_id": persona_id,
                        "version": version,
                        "folder": str(dest.relative_to(self.home)),
                        "sha256": sha,
                        "base_model": meta.get("base_model", ""),
                        "base_fingerprint": meta.get("base_fingerprint", ""),
                        "rank": int(meta["rank"]),
                        "alpha": float(meta["alpha"]),
                        "target_modules": json.dumps(sorted(meta.get("target_modules", []))),
                        "size_bytes": size,
                        "created": now(),
                    }
                ).last_pk
                db["personas"].update(persona_id, {"adapter_id": adapter_id, "updated": now()})
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise save_failed("the adapter", exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if "dest" in locals() and dest.exists() and not list(
                self._h.db["adapters"].rows_where("folder = ?", [str(dest.relative_to(self.home))])
            ):
                shutil.rmtree(dest, ignore_errors=True)
            raise
        return self.get(adapter_id)

    def remove_version(self, adapter_id: int, restore: int | None) -> None:
        """Undo `add_version` when the new version turned out unusable: drop its row, point
        the persona back at `restore`, and remove its folder."""
        row = self.get(adapter_id)
        with self._h.transaction() as db:
            db["personas"].update(row["persona_id"], {"adapter_id": restore, "updated": now()})
            db["adapters"].delete(adapter_id)
        shutil.rmtree(self.folder(row), ignore_errors=True)

    def remove_persona_files(self, persona_id: str) -> None:
        shutil.rmtree(self.root / persona_id, ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove temp folders and version folders no row points at (left by a crash)."""
        known = {r["folder"] for r in self._h.db["adapters"].rows}
        removed = []
        if not self.root.is_dir():
            return removed
        for persona_dir in self.root.iterdir():
            if not persona_dir.is_dir():
                continue
            for child in persona_dir.iterdir():
                rel = str(child.relative_to(self.home))
                if child.is_dir() and rel not in known:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child)
        return removed
