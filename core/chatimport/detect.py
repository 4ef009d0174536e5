"""Which exporter wrote a file: decided from its content, with the file name only as a tie-breaker.

Each sniffer looks at the first 64 KB of text. JSON is told apart by its keys (Discord
has `guild`/`channel`, Messenger `sender_name`/`timestamp_ms`, Telegram `date`/`from`
under `messages` or a `chats` list); JSON Lines by the keys of its first record; text by
its line shapes (a WhatsApp timestamp header, an imessage-exporter date line, the
DiscordChatExporter preamble or CSV header, or recurring `Name: ` prefixes). In a folder
or zip, media and junk are skipped and the chat files found decide.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Callable, Iterator

from core.errors import ExportFormatUnknown, ExportInvalid

from . import discord, imessage, llm, messenger, telegram, transcript, whatsapp
from .sources import Source, decode_head

Parser = Callable[..., Iterator]

FORMATS: dict[str, tuple[str, Parser]] = {
    "whatsapp": ("WhatsApp chat export (text)", whatsapp.parse),
    "signal": ("Signal chat (signal-export)", partial(whatsapp.parse, flavor="signal")),
    "telegram": ("Telegram Desktop export (JSON)", telegram.parse),
    "discord-json": ("DiscordChatExporter (JSON)", discord.parse_json),
    "discord-txt": ("DiscordChatExporter (TXT)", discord.parse_txt),
    "discord-csv": ("DiscordChatExporter (CSV)", discord.parse_csv),
    "messenger": ("Messenger / Instagram (JSON)", messenger.parse),
    "imessage": ("iMessage (imessage-exporter TXT)", imessage.parse),
    "openai-jsonl": ("OpenAI chat fine-tuning data (JSONL)", llm.parse_openai),
    "sharegpt": ("ShareGPT conversations (JSON/JSONL)", llm.parse_sharegpt),
    "sillytavern": ("SillyTavern chat (JSONL)", llm.parse_sillytavern),
    "transcript": ("Plain transcript (Name: text)", transcript.parse),
}
SUPPORTED = (
    "WhatsApp (.txt or .zip), Telegram (result.json), DiscordChatExporter (JSON, TXT, CSV), "
    "Messenger/Instagram (message_1.json), Signal (signal-export), iMessage (imessage-exporter TXT), "
    "OpenAI JSONL, ShareGPT, SillyTavern chats, and plain 'Name: text' transcripts"
)
_MEDIA_EXT = {
    "jpg", "jpeg", "png", "gif", "webp", "heic", "bmp", "svg", "mp4", "mov", "webm", "mkv", "3gp", "avi", "opus",
    "ogg", "mp3", "m4a", "aac", "wav", "amr", "pdf", "vcf", "docx", "doc", "xlsx", "pptx", "zip", "html", "htm",
    "css", "js", "thm", "tgs", "webm", "ico",
}
_KEY = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:')
_DISCORD_TXT = re.compile(r"^={20,}\r?\n(Guild|Channel): ", re.M)
_DISCORD_CSV = re.compile(r"^\"?AuthorID\"?,\"?Author\"?,\"?Date\"?,\"?Content\"?")
_ISO_BRACKET = re.compile(r"^\[\d{4}-\d{2}-\d{2}[ ,T]")
_WA_MARKERS = ("\u200e", "<Media omitted>", "omitted", "<attached:", "end-to-end", "(file attached)")


def _sniff_jsonl(lines: list[str]) -> str | None:
    try:
        first = json.loads(lines[0])
    except (ValueError, RecursionError, IndexError):  # a line that does not parse is not JSON Lines
        return None
    if not isinstance(first, dict):
        return None
    if isinstance(first.get("messages"), list) and all(isinstance(m, dict) and "role" in m for m in first["messages"][:5]):
        return "openai-jsonl"
    if isinstance(first.get("conversations"), list):
        return "sharegpt"
    if "mes" in first or {"user_name", "character_name"} & first.keys() or "chat_metadata" in first:
        return "sillytavern"
    return None


def _sniff_json(text: str) -> str | None:
    keys = set(_KEY.findall(text))
    if "spec" in keys and ("chara_card_v2" in text or "chara_card_v3" in text) or {"first_mes", "mes_example"} <= keys:
        raise ExportFormatUnknown(
            "This is a character card, not a chat export: import it as a persona card instead."
        )
    if {"guild", "channel"} <= keys:
        return "discord-json"
    if keys & {"sender_name", "timestamp_ms", "senderName"} or {"participants", "messages"} <= keys:
        return "messenger"
    if "chats" in keys or ("messages" in keys and keys & {"date", "date_unixtime", "from", "from_id"}):
        return "telegram"
    if text.startswith("[") and "conversations" in keys:
        return "sharegpt"
    return None


def sniff_text(text: str, name: str = "") -> str | None:
    """The format of one file from its first characters, or None."""
    t = text.lstrip("\ufeff \t\r\n")
    if not t:
        return None
    lines = t.splitlines()
    if len(lines) > 1 and len(text) >= 65536:
        lines = lines[:-1]  # the last line of a cut sample may be cut too
    if t[0] in "{[":
        if t[0] == "{" and len(lines) > 1 and lines[1].lstrip().startswith("{"):
            return _sniff_jsonl(lines)
        fmt = _sniff_json(t)
        if fmt is None and t[0] == "{":
            fmt = _sniff_jsonl(lines)
        if fmt is not None:
            return fmt
    if _DISCORD_CSV.match(t):
        return "discord-csv"
    if _DISCORD_TXT.match(t):
        return "discord-txt"
    sample = [ln for ln in lines[:500] if ln.strip()]
    if sample and imessage.DATE_LINE.match(sample[0]):
        return "imessage"
    headers = [ln for ln in sample if whatsapp.match_header(ln)]
    if headers and (whatsapp.match_header(sample[0]) or len(headers) * 10 >= len(sample)):
        iso = sum(1 for h in headers if _ISO_BRACKET.match(h.lstrip(whatsapp.MARKS)))
        if iso * 2 > len(headers):
            is_wa = any(mark in t for mark in _WA_MARKERS) or name.lower().startswith(("_chat", "whatsapp"))
            return "whatsapp" if is_wa else "signal"
        return "whatsapp"
    if sample and t[0] not in "{[":
        speakers = transcript.find_speakers(sample)
        named = sum(1 for ln in sample if (c := transcript.candidate(ln)) and c[0] in speakers)
        if speakers and named >= 2 and named * 10 >= len(sample) * 3:
            return "transcript"
    return None


def _ext(src: Source) -> str:
    base = src.basename.lower()
    return base.rsplit(".", 1)[-1] if "." in base else ""


def detect(sources: list[Source], label: str) -> tuple[str, list[Source]]:
    """(format, the sources that hold the chat) for an export's files."""
    members = [s for s in sources if messenger.MEMBER.search(s.name.replace("\\", "/"))]
    if members:
        _, text = decode_head(members[0])
        if sniff_text(text, members[0].basename) == "messenger":
            return "messenger", members
    single = len(sources) == 1
    candidates = [s for s in sources if single or _ext(s) not in _MEDIA_EXT]
    # The exporters' own file names first, so a zip's _chat.txt wins over a stray note.
    candidates.sort(key=lambda s: (s.basename not in ("_chat.txt", "result.json"), s.name))
    found: dict[str, list[Source]] = {}
    order: list[str] = []
    empty = []
    for src in candidates[:200]:
        if src.size == 0:
            empty.append(src.basename)
            continue
        try:
            _, text = decode_head(src)
        except ExportInvalid:
            if single:
                raise
            continue  # a stray non-UTF-8 file beside the chat
        fmt = sniff_text(text, src.basename)
        if fmt:
            if fmt not in found:
                order.append(fmt)
            found.setdefault(fmt, []).append(src)
    if not order:
        if single and empty:
            raise ExportInvalid(f"{label!r} is empty.")
        what = f"{label!r}" if single else f"None of the {len(candidates)} files in {label!r}"
        verb = "is not" if single else "is"
        raise ExportFormatUnknown(
            f"{what} {verb} a chat export Chorus recognises. Supported: {SUPPORTED}."
        )
    fmt = order[0]
    return fmt, found[fmt]
