"""Facebook Messenger and Instagram JSON (message_1.json, message_2.json, ...).

A thread is spread over several files, newest message first; a folder or zip may hold
many threads (one folder each). Each thread is gathered, de-duplicated (newer exports
can repeat every message) and put in time order. Strings are mojibake: UTF-8 bytes
written as Latin-1 code points; each is repaired, and kept as it is when the repair
fails (then it was not mojibake). The 2024 end-to-end-encrypted export shape
(`senderName`, `text`, `timestamp`, `isUnsent`, `media`) is read too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterator

from core.errors import ExportInvalid

from .jsonstream import JsonWalker
from .model import DELETED, MEDIA, REACTION, SYSTEM, TEXT, Conversation, Message, Note
from .sources import ProgressTracker, Source, not_utf8, open_text
from .timeparse import from_unix

MEMBER = re.compile(r"(^|/)message_(\d+)\.json$")
_MEDIA_KEYS = ("photos", "videos", "audio_files", "files", "gifs", "sticker", "media")
_REACTED = re.compile(r"^(Reacted|.{1,80} reacted) .{1,12} to (your|a|their|.{1,80}'s) message\.?$|^.{1,80} liked a message\.?$")
_SENT_MEDIA = re.compile(r"^.{1,80} sent (an attachment|a photo|\d+ photos|a video|a GIF|a sticker|a voice message|"
                         r"an audio clip|a file)\.?$")
_ADMIN = re.compile(
    r"(named the group|changed the group photo|added .+ to the group|left the group|removed .+ from the group|"
    r"set the nickname|set (your|his|her|their) nickname|changed the chat theme|changed the theme|set the emoji|"
    r"started a call|joined the call|missed (a|your) call|started sharing video|created the group|"
    r"pinned a message|unsent a message|started a video chat|The video chat ended|The call ended)", re.I
)


def fix_mojibake(value):
    """Repair Messenger's Latin-1-escaped UTF-8, recursively; keep what does not repair."""
    if isinstance(value, str):
        if not any("\x80" <= ch <= "\xff" for ch in value):
            return value
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value
    if isinstance(value, list):
        return [fix_mojibake(v) for v in value]
    if isinstance(value, dict):
        return {k: fix_mojibake(v) for k, v in value.items()}
    return value


def to_message(raw) -> tuple[int, Message]:
    """(timestamp in ms for sorting, message)."""
    if not isinstance(raw, dict):
        return 0, Message(None, None, "", SYSTEM)
    speaker = raw.get("sender_name") or raw.get("senderName") or "(unknown)"
    ts = raw.get("timestamp_ms", raw.get("timestamp"))
    ts = ts if isinstance(ts, (int, float)) else 0
    when = from_unix(ts) if ts else None
    content = raw.get("content", raw.get("text"))
    content = content.strip() if isinstance(content, str) else ""
    if raw.get("is_unsent") or raw.get("isUnsent"):
        return ts, Message(speaker, when, "", DELETED)
    if raw.get("type") in ("Call", "Subscribe", "Unsubscribe") or "call_duration" in raw:
        return ts, Message(speaker, when, content, SYSTEM)
    if content and _REACTED.match(content):
        return ts, Message(speaker, when, "", REACTION)
    media = next((k for k in _MEDIA_KEYS if raw.get(k)), None)
    if media is None and isinstance(raw.get("share"), dict) and not content:
        media = "share"
    if not content or (media and _SENT_MEDIA.match(content)):
        return ts, Message(speaker, when, "", MEDIA if media else SYSTEM, media)
    if _ADMIN.search(content) and raw.get("type") in (None, "Generic") and len(content) < 200 and not media:
        # Messenger writes admin events as ordinary messages; only the wording tells them apart.
        if re.match(r"^(You|%s) " % re.escape(str(speaker)), content):
            return ts, Message(speaker, when, content, SYSTEM)
    return ts, Message(speaker, when, content, TEXT, media)


def _load(src: Source, tracker) -> tuple[str | None, list[tuple[int, Message]]]:
    """(title, messages) of one file, streamed: memory is bounded by one message, not the file."""
    meta: dict = {}
    found = False
    rows: list[tuple[int, Message]] = []
    try:
        with open_text(src, tracker) as fh:
            for event, path, value in JsonWalker(fh, src.name, [("messages", "*")]).walk():
                if event == "item":
                    rows.append(to_message(fix_mojibake(value)))
                elif event == "end" and path == ("messages",):
                    found = True
                elif event == "value" and path in (("title",), ("threadName",)):
                    meta[path[0]] = fix_mojibake(value)
    except UnicodeDecodeError as exc:
        raise not_utf8(src.basename, exc) from None
    if not found:
        raise ExportInvalid(f"{src.name!r} has no list of messages.")
    return meta.get("title") or meta.get("threadName"), rows


def parse(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    threads: dict[str, list[Source]] = defaultdict(list)
    for src in sources:
        folder = src.name.replace("\\", "/").rsplit("/", 1)[0] if "/" in src.name.replace("\\", "/") else ""
        threads[folder].append(src)
    for folder in sorted(threads):
        files = sorted(threads[folder], key=lambda s: int(m.group(2)) if (m := MEMBER.search(s.name)) else 0)
        title = folder.rsplit("/", 1)[-1] or files[0].basename
        seen: set = set()
        dups = 0
        rows: list[tuple[int, int, Message]] = []
        for src in files:
            file_title, messages = _load(src, tracker)
            title = file_title or title
            for ts, msg in messages:
                key = (msg.speaker, ts, msg.kind, msg.text, msg.media)
                if key in seen:
                    dups += 1
                    continue
                seen.add(key)
                rows.append((ts, -len(rows), msg))
        # Files and their messages run newest first: ascending time, ties in reverse file order.
        rows.sort(key=lambda r: (r[0], r[1]))
        if dups:
            yield Note(f"{title}: {dups:,} repeated messages were dropped.")
        yield Conversation(title=str(title))
        for _, _, msg in rows:
            yield msg
