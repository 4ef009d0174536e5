"""Persona records: a card (name, description, personality, scenario, greeting, example
dialogue, system prompt, avatar) keyed by a stable id, plus the adapter it currently uses.

Ids are slugs made once from the first name given and never change, so renaming a
persona keeps its conversations, adapters and peft adapter name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path

from storage.db import DatabaseHandle, decode_json, now, save_failed
from storage.errors import ChorusError, NotFound

CARD_FIELDS = (
    "name",
    "tagline",
    "description",
    "personality",
    "scenario",
    "greeting",
    "alternate_greetings",
    "example_dialogue",
    "system_prompt",
    "extras",
)
_JSON_FIELDS = {"alternate_greetings": list, "extras": dict}
MAX_NAME = 80
MAX_FIELD = 256 * 1024  # the same limit the card reader applies
AVATAR_TYPES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"RIFF": ".webp"}
MAX_AVATAR = 8 * 1024 * 1024


class PersonaInvalid(ChorusError):
    """A persona card that cannot be saved as given."""


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:40] or "persona"


def _decode(row: dict) -> dict:
    return decode_json(row, _JSON_FIELDS)


def validate_fields(fields: dict, *, creating: bool) -> dict:
    """Check and normalise card fields; raise PersonaInvalid saying what to fix."""
    unknown = set(fields) - set(CARD_FIELDS)
    if unknown:
        raise PersonaInvalid(f"Unknown persona fields: {', '.join(sorted(unknown))}.")
    out = {}
    for key, value in fields.items():
        if key in _JSON_FIELDS:
            kind = _JSON_FIELDS[key]
            if value is None:
                value = kind()
            if not isinstance(value, kind):
                raise PersonaInvalid(f"The field '{key}' must be a {kind.__name__}.")
            if key == "alternate_greetings":
                value = [str(v) for v in value]
            text = json.dumps(value, ensure_ascii=False)
            if len(text) > 16 * MAX_FIELD:
                raise PersonaInvalid(f"The field '{key}' is too large ({len(text):,} characters).")
            out[key] = text
            continue
        value = "" if value is None else str(value)
        value = value.replace("\r\n", "\n")
        if key == "name":
            value = " ".join(value.split())
            if not value:
                raise PersonaInvalid("A persona needs a name.")
            if len(value) > MAX_NAME:
                raise PersonaInvalid(f"The name is {len(value)} characters long; keep it under {MAX_NAME}.")
        elif len(value) > MAX_FIELD:
            raise PersonaInvalid(
                f"The field '{key}' is {len(value):,} characters long; the limit is {MAX_FIELD:,}. Shorten it."
            )
        out[key] = value
    if creating and "name" not in out:
        raise PersonaInvalid("A persona needs a name.")
    return out


class PersonaRepo:
    def __init__(self, handle: DatabaseHandle, home: Path):
        self._h = handle
        self._home = Path(home)

    @property
    def _table(self):
        return self._h.db["personas"]

    def list(self) -> list[dict]:
        return [_decode(r) for r in self._table.rows_where(order_by="lower(name)")]

    def get(self, persona_id: str) -> dict:
        rows = list(self._table.rows_where("id = ?", [persona_id]))
        if not rows:
            raise NotFound(f"There is no persona with the id '{persona_id}'.")
        return _decode(rows[0])

    def find(self, id_or_name: str) -> dict:
        """A persona by id, else by name (case-insensitive)."""
        key = id_or_name.strip()
        rows = list(self._table.rows_where("id = ?", [key]))
        if not rows:
            rows = list(self._table.rows_where("lower(name) = lower(?)", [key]))
        if not rows:
            names = ", ".join(p["name"] for p in self.list()) or "none yet"
            raise NotFound(f"No persona is called '{key}'. Personas: {names}.")
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows)
            raise NotFound(f"Several personas are called '{key}'; use one of their ids: {ids}.")
        return _decode(rows[0])

    def _free_id(self, name: str) -> str:
        base = slugify(name)
        candidate, n = base, 2
        while list(self._table.rows_where("id = ?", [candidate])):
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def create(self, fields: dict, *, source: str = "user", persona_id: str | None = None) -> dict:
        clean = validate_fields(fields, creating=True)
        stamp = now()
        with self._h.transaction():
            pid = persona_id or self._free_id(clean["name"])
            if persona_id and list(self._table.rows_where("id = ?", [persona_id])):
                raise PersonaInvalid(f"A persona with the id '{persona_id}' already exists.")
            self._table.insert({"id": pid, **clean, "source": source, "created": stamp, "updated": stamp})
        return self.get(pid)

    def update(self, persona_id: str, fields: dict) -> dict:
        self.get(persona_id)
        clean = validate_fields(fields, creating=False)
        if clean:
            with self._h.transaction():
                self._table.update(persona_id, {**clean, "updated": now()})
        return self.get(persona_id)

    def delete(self, persona_id: str) -> dict:
        """Delete the record (its adapter rows go with it); returns the deleted row."""
        row = self.get(persona_id)
        with self._h.transaction():
            self._table.delete(persona_id)
        if row.get("avatar"):
            (self._home / row["avatar"]).unlink(missing_ok=True)
        return row

    def set_adapter(self, persona_id: str, adapter_id: int | None) -> None:
        with self._h.transaction():
            self._table.update(persona_id, {"adapter_id": adapter_id, "updated": now()})

    def set_avatar(self, persona_id: str, data: bytes | None) -> dict:
        """Store avatar image bytes (PNG, JPEG, GIF, WebP) beside the database, atomically."""
        row = self.get(persona_id)
        rel = None
        if data:
            ext = next((e for magic, e in AVATAR_TYPES.items() if data.startswith(magic)), None)
            if ext is None:
                raise PersonaInvalid("The avatar must be a PNG, JPEG, GIF or WebP image.")
            if len(data) > MAX_AVATAR:
                raise PersonaInvalid(f"The avatar is {len(data) / 1e6:.1f} MB; the limit is {MAX_AVATAR / 1e6:.0f} MB.")
            folder = self._home / "avatars"
            name = f"{persona_id}-{hashlib.sha256(data).hexdigest()[:12]}{ext}"
            tmp = folder / f".{name}.tmp"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                os.replace(tmp, folder / name)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise save_failed("the avatar", exc) from None
            rel = f"avatars/{name}"
        with self._h.transaction():
            self._table.update(persona_id, {"avatar": rel, "updated": now()})
        if row.get("avatar") and row["avatar"] != rel:
            (self._home / row["avatar"]).unlink(missing_ok=True)
        return self.get(persona_id)

    def avatar_path(self, row: dict) -> Path | None:
        if not row.get("avatar"):
            return None
        path = self._home / row["avatar"]
        return path if path.is_file() else None
