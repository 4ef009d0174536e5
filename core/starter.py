"""Seeding the starter persona cards from `personas/` into an empty store, once."""

from __future__ import annotations

import json
from pathlib import Path

from storage.store import Store

STARTER_DIR = Path(__file__).resolve().parent.parent / "personas"
_SEEDED_KEY = "starter_personas_seeded"
_FIELDS = ("name", "tagline", "description", "personality", "scenario", "greeting", "example_dialogue", "system_prompt")


def load_starter_cards(folder: Path = STARTER_DIR) -> list[dict]:
    cards = []
    for path in sorted(folder.glob("*.json")):
        card = json.loads(path.read_text(encoding="utf-8"))
        if card.get("format") != "chorus-persona/1":
            continue
        card["_avatar_path"] = folder / card["avatar"] if card.get("avatar") else None
        cards.append(card)
    return cards


def seed_starters(store: Store, folder: Path = STARTER_DIR) -> int:
    """Insert the starter cards if this data folder has never been seeded. Returns how many."""
    settings = store.handle.db["settings"]
    if list(settings.rows_where("key = ?", [_SEEDED_KEY])):
        return 0
    count = 0
    for card in load_starter_cards(folder):
        fields = {k: card.get(k, "") for k in _FIELDS}
        row = store.personas.create(fields, source="starter", persona_id=card["id"])
        if card["_avatar_path"] and card["_avatar_path"].is_file():
            store.personas.set_avatar(row["id"], card["_avatar_path"].read_bytes())
        count += 1
    with store.handle.transaction() as db:
        db["settings"].upsert({"key": _SEEDED_KEY, "value": "1"}, pk="key")
    return count
