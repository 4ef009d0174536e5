"""Card <-> persona store row: the fields the persona editor shows, and `extras` for the rest.

The row has exactly: name, description, personality, scenario, greeting, alternate_greetings,
example_dialogue, system_prompt, tagline, extras. `extras` holds post_history_instructions,
creator_notes, tags, creator, character_version, and the card's own extras as "data" and
"root" (see `Card.extras`), so card -> fields -> card gives the same card back (the avatar
travels separately). The tagline is derived, never read back.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from core.errors import CardInvalid
from core.cards.model import Card

TAGLINE_MAX = 100
_MAIN_TEXT = ("name", "description", "personality", "scenario", "greeting", "example_dialogue", "system_prompt")
_EXTRA_TEXT = ("post_history_instructions", "creator_notes", "creator", "character_version")
_CARD_EXTRAS = ("data", "root")

_HTML_TAG = re.compile(r"<[^>]{0,500}>")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_MD_MARKS = re.compile(r"[*_`#>~|]+")
_SENTENCE = re.compile(r"^(.+?[.!?…])(?:\s|$)")


def _plain(text: str, name: str) -> str:
    # A function, not a template: names may hold backslashes ("\\1" must stay literal).
    text = re.sub(r"\{\{char\}\}|<bot>|<char>", lambda _: name, text, flags=re.I)
    text = re.sub(r"\{\{user\}\}|<user>", "you", text, flags=re.I)
    text = _MD_IMAGE.sub(" ", _HTML_TAG.sub(" ", text))
    text = _URL.sub(" ", _MD_LINK.sub(r"\1", text))
    return _MD_MARKS.sub("", text)


def derive_tagline(card: Card, limit: int = TAGLINE_MAX) -> str:
    """One line for persona lists: the first sentence of the creator notes, else of the description."""
    for source in (card.creator_notes, card.description):
        for line in _plain(source, card.name).split("\n"):
            line = " ".join(line.split())
            # W++/JSON-style descriptions ("[character(...)", "{...") read badly as a tagline.
            if sum(ch.isalpha() for ch in line) < 3 or line[0] in "[{(":
                continue
            m = _SENTENCE.match(line)
            sentence = m.group(1) if m else line
            if len(sentence) <= limit:
                return sentence
            cut = sentence[: limit - 1]
            if " " in cut[limit // 2 :]:
                cut = cut[: cut.rindex(" ")]
            return cut.rstrip(" ,;:-") + "…"
        # This source had no usable line; try the next one.
    return ""


def card_to_persona_fields(card: Card) -> dict[str, Any]:
    """The persona row for a card (the avatar is not part of it)."""
    extras: dict[str, Any] = {k: getattr(card, k) for k in _EXTRA_TEXT}
    extras["tags"] = list(card.tags)
    for part in _CARD_EXTRAS:
        if card.extras.get(part):
            extras[part] = copy.deepcopy(card.extras[part])
    return {
        "name": card.name,
        "description": card.description,
        "personality": card.personality,
        "scenario": card.scenario,
        "greeting": card.greeting,
        "alternate_greetings": list(card.alternate_greetings),
        "example_dialogue": card.example_dialogue,
        "system_prompt": card.system_prompt,
        "tagline": derive_tagline(card),
        "extras": extras,
    }


def _str(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardInvalid(f"The persona's {key} should be text.")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CardInvalid(f"The persona's {key} should be a list of text.")
    return list(value)


def persona_fields_to_card(fields: dict[str, Any], avatar: bytes | None = None) -> Card:
    """The card for a persona row; keys other than the documented ones (and the tagline) are ignored."""
    extras = fields.get("extras") or {}
    if not isinstance(extras, dict):
        raise CardInvalid("The persona's extras should be an object.")
    name = _str(fields.get("name"), "name").strip()
    if not name:
        raise CardInvalid("The persona has no name; give it one before exporting.")
    values: dict[str, Any] = {k: _str(fields.get(k), k) for k in _MAIN_TEXT}
    values["name"] = name
    values.update({k: _str(extras.get(k), k) for k in _EXTRA_TEXT})
    values["alternate_greetings"] = _str_list(fields.get("alternate_greetings"), "alternate_greetings")
    values["tags"] = _str_list(extras.get("tags"), "tags")
    card_extras = {}
    for part in _CARD_EXTRAS:
        if extras.get(part):
            if not isinstance(extras[part], dict):
                raise CardInvalid(f"The persona's extras.{part} should be an object.")
            card_extras[part] = copy.deepcopy(extras[part])
    return Card(**values, extras=card_extras, avatar=avatar)
