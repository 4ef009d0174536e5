"""Telegram Desktop JSON exports (result.json): one chat, or a whole account.

A single-chat export is `{name, type, id, messages}`; a full-account export nests the
chats under `chats.list` (and `left_chats.list`). Both are streamed with `JsonWalker`,
one message at a time, so a multi-hundred-MB account export stays in bounded memory.

Old and new field shapes are both read: `text` as a string or a list of strings and
entity objects, `text_entities` when `text` is absent, `from_id` as "user123" or a bare
integer, `date` (local time, preferred because it is what the user saw) or only
`date_unixtime` (UTC).
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

from .jsonstream import JsonWalker
from .model import MEDIA, POLL, SYSTEM, TEXT, Conversation, Message
from .sources import ProgressTracker, Source, open_text
from .timeparse import from_unix

PATTERNS = [
    ("messages", "*"),
    ("chats", "list", "*", "messages", "*"),
    ("left_chats", "list", "*", "messages", "*"),
]
_MEDIA_KEYS = ("photo", "file", "media_type", "sticker_emoji", "location_information", "contact_information",
               "place_name", "game_title", "live_location_period_seconds")


def flatten_text(value) -> str:
    """Telegram text: a string, or a list of strings and `{type, text}` entities."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(value)


def _time(raw: dict) -> datetime | None:
    date = raw.get("date")
    if isinstance(date, str):
        try:
            return datetime.fromisoformat(date)
        except ValueError:
            pass
    return from_unix(raw.get("date_unixtime"))


def _speaker(raw: dict, key: str, id_key: str) -> str:
    name = raw.get(key)
    if isinstance(name, str) and name.strip():
        return name.strip()
    ident = raw.get(id_key)
    return f"Deleted Account ({ident})" if ident is not None else "Deleted Account"


def to_message(raw) -> Message:
    if not isinstance(raw, dict):
        return Message(None, None, "", SYSTEM)
    when = _time(raw)
    kind = raw.get("type", "message")
    text_value = raw.get("text") if "text" in raw else raw.get("text_entities")
    text = flatten_text(text_value).strip()
    if kind == "service":
        action = raw.get("action") or "service"
        return Message(_speaker(raw, "actor", "actor_id"), when, str(action), SYSTEM)
    if kind != "message":
        return Message(None, when, "", SYSTEM)
    speaker = _speaker(raw, "from", "from_id")
    forwarded = bool(raw.get("forwarded_from") or raw.get("via_bot"))
    if "poll" in raw:
        return Message(speaker, when, "", POLL)
    media = None
    for key in _MEDIA_KEYS:
        if raw.get(key):
            media = raw.get("media_type") or key
            if media == "sticker" and raw.get("sticker_emoji"):
                media = f"sticker {raw['sticker_emoji']}"
            break
    if not text:
        return Message(speaker, when, "", MEDIA, media or "unsupported")
    return Message(speaker, when, text, TEXT, media, forwarded)


def parse(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        with open_text(src, tracker) as fh:
            yield from _walk(JsonWalker(fh, src.basename, PATTERNS), src)


def _walk(walker: JsonWalker, src: Source) -> Iterator:
    meta: dict = {}
    started = False
    for event, path, value in walker.walk():
        if event == "value" and len(path) in (1, 4) and path[-1] in ("name", "type", "id"):
            meta[path[-1]] = value
        elif event == "item":
            if not started:
                title = meta.get("name") or ("Saved Messages" if meta.get("type") == "saved_messages" else src.basename)
                yield Conversation(title=str(title), kind=str(meta.get("type", "")))
                started = True
            yield to_message(value)
        elif event == "end" and len(path) == 3:  # one chat of a full-account export is done
            meta, started = {}, False
