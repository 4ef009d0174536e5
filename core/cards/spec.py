"""Card JSON <-> `Card`: the V1, V2 (`chara_card_v2`) and V3 (`chara_card_v3`) shapes.

Reading follows what real files look like, not only the specs: V2/V3 cards often repeat
the V1 fields at the top level (the `data` copy wins), V1 cards may carry V2 fields flat at
the top, old Pygmalion-style cards use `char_name`/`char_persona`..., fields may be null.
Text fields get `\\n` line ends; everything Chorus does not use goes to `Card.extras`.

Writing gives SillyTavern what it reads: V2 with the V1 fields mirrored at the top level,
and V3 with every V2 field kept inside `data` (SillyTavern and RisuAI both read them there).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from core.errors import CardInvalid
from core.cards.model import MAX_CARD_JSON_BYTES, Card
from core.cards.safejson import check_strings

V2_SPEC, V3_SPEC = "chara_card_v2", "chara_card_v3"
V1_KEYS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
# spec key -> Card attribute, for every text field Chorus maps.
TEXT_FIELDS = {
    "name": "name",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
    "creator_notes": "creator_notes",
    "creator": "creator",
    "character_version": "character_version",
}
LIST_FIELDS = {"alternate_greetings": "alternate_greetings", "tags": "tags"}
KNOWN_DATA_KEYS = set(TEXT_FIELDS) | set(LIST_FIELDS)
# Old TavernAI/Pygmalion names, read as the V1 field they became.
V1_ALIASES = {
    "char_name": "name",
    "char_persona": "description",
    "char_greeting": "first_mes",
    "world_scenario": "scenario",
    "example_dialogue": "mes_example",
}
# Top-level copies SillyTavern writes beside `data`; stale duplicates once `data` is read.
ROOT_MIRRORS = set(V1_KEYS) | {"tags", "creatorcomment", "spec", "spec_version", "data"}
CHORUS_EXTENSION = "chorus"


@dataclass
class Parsed:
    """A card object read from JSON, before the container (PNG, CHARX) adds avatar and adapter."""

    card: Card
    kind: str  # "v1", "v2", "v3"
    warnings: list[str] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)  # data.assets, for the container to resolve
    chorus: dict[str, Any] | None = None  # data.extensions.chorus, written by Chorus bundles


def _text(value: Any, path: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise CardInvalid(f"The card's {path} should be text, not true/false. Fix it in the card editor.")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise CardInvalid(
            f"The card's {path} should be text, not a {'list' if isinstance(value, list) else 'object'}. "
            "The card is malformed; fix it in the editor that made it."
        )
    # CRLF and lone CR come from Windows editors; prompts and textareas want \n.
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _text_list(value: Any, path: str, *, comma_split: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        if comma_split:
            return [t.strip() for t in value.split(",") if t.strip()]
        return [_text(value, path)] if value else []
    if not isinstance(value, list):
        raise CardInvalid(f"The card's {path} should be a list of text. The card is malformed.")
    return [_text(item, f"{path}[{i}]") for i, item in enumerate(value) if item is not None]


def _fill(card_values: dict[str, Any], source: dict[str, Any], prefix: str) -> None:
    for key, attr in TEXT_FIELDS.items():
        if key in source:
            card_values[attr] = _text(source[key], prefix + key)
    for key, attr in LIST_FIELDS.items():
        if key in source:
            card_values[attr] = _text_list(source[key], prefix + key, comma_split=(key == "tags"))


def _pack_extras(data_extra: dict[str, Any], root_extra: dict[str, Any]) -> dict[str, Any]:
    # Defaults the writers add back are dropped, so import -> export -> import is stable.
    if data_extra.get("extensions") == {}:
        del data_extra["extensions"]
    if data_extra.get("group_only_greetings") == []:
        del data_extra["group_only_greetings"]
    extras: dict[str, Any] = {}
    if data_extra:
        extras["data"] = data_extra
    if root_extra:
        extras["root"] = root_extra
    return extras


def parse_card_obj(obj: Any, *, fallback_name: str | None = None) -> Parsed:
    """Read a parsed card JSON object into a `Card` (no avatar) plus what the container needs."""
    if not isinstance(obj, dict):
        raise CardInvalid("This JSON is not a character card: it is not an object with fields.")
    obj = copy.deepcopy(obj)
    warnings: list[str] = []
    spec = obj.get("spec")
    data = obj.get("data")
    values: dict[str, Any] = {}

    if isinstance(spec, str) and spec.startswith("chara_card_v") and spec not in (V2_SPEC, V3_SPEC):
        if not isinstance(data, dict):
            raise CardInvalid(f"The card says it is {spec!r} but has no data object; it cannot be read.")
        warnings.append(f"The card uses the format {spec!r}, newer than Chorus knows; it was read as V3.")
        spec = V3_SPEC
    if spec in (V2_SPEC, V3_SPEC) and not isinstance(data, dict):
        if not any(k in obj for k in V1_KEYS):
            raise CardInvalid(f"The card says it is {spec} but its data is missing or not an object.")
        # Some tools label flat V1 cards as V2; the fields are there, so read them.
        warnings.append(f"The card says it is {spec} but has no data object; it was read as a V1 card.")
        spec = None
    if spec in (V2_SPEC, V3_SPEC) or (spec is None and isinstance(data, dict)):
        kind = "v3" if spec == V3_SPEC else "v2"
        version = obj.get("spec_version")
        if kind == "v3":
            try:
                if float(version) > 3.0:
                    warnings.append(
                        f"The card was made with V3 spec version {version}; fields newer than 3.0 are kept but unused."
                    )
            except (TypeError, ValueError):
                pass
        # Sloppy cards leave a field only at the top level: use it when `data` lacks it.
        _fill(values, {k: obj[k] for k in V1_KEYS if k in obj and k not in data}, "")
        _fill(values, data, "data.")
        data_extra = {k: v for k, v in data.items() if k not in KNOWN_DATA_KEYS}
        root_extra = {k: v for k, v in obj.items() if k not in ROOT_MIRRORS}
    else:
        if not any(k in obj for k in (*V1_KEYS, *V1_ALIASES)):
            raise CardInvalid(
                "This JSON is not a character card: it has no name, description or data. "
                "Import a SillyTavern/Tavern card (.json, .png) or a .charx bundle."
            )
        kind = "v1"
        for alias, key in V1_ALIASES.items():
            if alias in obj and key not in obj:
                obj[key] = obj[alias]
        if "creatorcomment" in obj and "creator_notes" not in obj:
            obj["creator_notes"] = obj["creatorcomment"]
        _fill(values, obj, "")
        data_extra = {}
        skip = KNOWN_DATA_KEYS | set(V1_ALIASES) | {"creatorcomment", "spec", "spec_version", "data"}
        root_extra = {k: v for k, v in obj.items() if k not in skip}

    # data.extensions.chorus is Chorus's own bundle metadata: the container reads it, the card
    # does not keep it (a stale copy would describe an adapter that is no longer there).
    chorus = None
    ext = data_extra.get("extensions")
    if ext is not None and not isinstance(ext, dict):
        raise CardInvalid("The card's data.extensions should be an object. The card is malformed.")
    if isinstance(ext, dict) and CHORUS_EXTENSION in ext:
        chorus = ext.pop(CHORUS_EXTENSION)
        chorus = chorus if isinstance(chorus, dict) else None
    assets = data_extra.pop("assets", None)
    if assets is not None and not isinstance(assets, list):
        raise CardInvalid("The card's data.assets should be a list. The card is malformed.")
    assets = [a for a in (assets or []) if isinstance(a, dict)]

    name = values.get("name", "").strip()
    if not name:
        if not fallback_name:
            raise CardInvalid("The card has no name. Give the character a name in the card editor and export again.")
        warnings.append(f"The card has no name; it was named {fallback_name!r} after its file.")
        values["name"] = fallback_name
    else:
        values["name"] = name
    card = Card(**values, extras=_pack_extras(data_extra, root_extra))
    return Parsed(card=card, kind=kind, warnings=warnings, assets=assets, chorus=chorus)


def keep_assets(card: Card, assets: list[dict[str, Any]]) -> None:
    """Put assets Chorus did not consume back into the card's extras, so exports keep them."""
    if assets:
        card.extras.setdefault("data", {})["assets"] = copy.deepcopy(assets)


def _data_dict(card: Card, *, v3: bool, assets: list[dict[str, Any]] | None, chorus: dict[str, Any] | None) -> dict:
    extra = copy.deepcopy(card.extras.get("data", {}))
    data: dict[str, Any] = {key: getattr(card, attr) for key, attr in TEXT_FIELDS.items()}
    data["alternate_greetings"] = list(card.alternate_greetings)
    data["tags"] = list(card.tags)
    extensions = extra.pop("extensions", {})
    if chorus is not None:
        extensions[CHORUS_EXTENSION] = chorus
    data["extensions"] = extensions
    if v3:
        data["group_only_greetings"] = extra.pop("group_only_greetings", [])
    kept_assets = extra.pop("assets", [])
    all_assets = [*(assets or []), *kept_assets]
    if all_assets:
        data["assets"] = all_assets
    data.update(extra)
    return data


def card_to_v2_dict(card: Card) -> dict[str, Any]:
    """SillyTavern's V2 shape: spec, spec_version, data, and the V1 fields again at the top."""
    data = _data_dict(card, v3=False, assets=None, chorus=None)
    out: dict[str, Any] = {k: data[k] for k in V1_KEYS}
    out.update(spec=V2_SPEC, spec_version="2.0", data=data)
    for key, value in copy.deepcopy(card.extras.get("root", {})).items():
        out.setdefault(key, value)
    return out


def card_to_v3_dict(
    card: Card, *, assets: list[dict[str, Any]] | None = None, chorus: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The V3 shape. `assets` are listed first in data.assets; `chorus` goes to data.extensions.chorus."""
    out: dict[str, Any] = {"spec": V3_SPEC, "spec_version": "3.0"}
    out["data"] = _data_dict(card, v3=True, assets=assets, chorus=chorus)
    for key, value in copy.deepcopy(card.extras.get("root", {})).items():
        out.setdefault(key, value)
    return out


def dump_json(obj: dict[str, Any], what: str = "card") -> bytes:
    """Compact UTF-8 JSON, refused if Chorus could not read it back."""
    check_strings(obj, what)
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_CARD_JSON_BYTES:
        raise CardInvalid(
            f"The {what} would be {len(raw) / 1024**2:.1f} MB of JSON, over the "
            f"{MAX_CARD_JSON_BYTES // 1024**2} MB limit for cards; shorten its longest fields."
        )
    return raw


def card_to_v2_json(card: Card) -> bytes:
    """A V2 card file SillyTavern reads (`chara_card_v2`, V1 fields mirrored at the top)."""
    return dump_json(card_to_v2_dict(card))


def card_to_v3_json(card: Card) -> bytes:
    """A V3 card file (`chara_card_v3`)."""
    return dump_json(card_to_v3_dict(card))
