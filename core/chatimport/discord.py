"""DiscordChatExporter exports: JSON (streamed), plain text and CSV.

JSON carries a message `type`: Default and Reply are people talking, everything else
(joins, pins, calls, thread starts, renames) is a system line. TXT and CSV lose the type,
so the exporter's fallback sentences for system messages are recognised instead.
A message with no words but attachments or stickers is a media placeholder; the names
of its attachments are kept apart in `media`.
"""

from __future__ import annotations

import csv
import re
from typing import Iterator

from core.errors import ExportInvalid

from .jsonstream import JsonWalker
from .model import MAX_ITEM_CHARS, MEDIA, SYSTEM, TEXT, Conversation, Message, MessageLines, Note
from .sources import ProgressTracker, Source, bounded_lines, iter_lines, not_utf8, open_text
from .timeparse import parse_loose

_TALK = {"Default", "Reply", "0", "19", ""}
# DiscordChatExporter's GetFallbackContent sentences for system messages.
_SYSTEM = re.compile(
    r"^(Added .+ to the group\.|Removed .+ from the group\.|Left the group\.|Started a call( that lasted .+)?\.|"
    r"Changed the channel name: .*|Changed the channel icon\.|Pinned a message\.|Joined the server\.|"
    r"Started a thread\.|.+ started a thread\.)$"
)


def _name(author: dict) -> str:
    name = author.get("nickname") or author.get("name") or "(unknown)"
    disc = str(author.get("discriminator") or "")
    if disc.strip("0") and "#" not in name and not author.get("nickname"):
        name = f"{name}#{disc}"
    return str(name)


def json_message(raw) -> Message:
    if not isinstance(raw, dict):
        return Message(None, None, "", SYSTEM)
    author = raw.get("author") if isinstance(raw.get("author"), dict) else {}
    speaker = _name(author)
    when = parse_loose(raw.get("timestamp"))
    content = str(raw.get("content") or "").strip()
    if str(raw.get("type", "Default")) not in _TALK:
        return Message(speaker, when, content, SYSTEM)
    files = [a.get("fileName") or a.get("url") or "attachment" for a in raw.get("attachments") or [] if isinstance(a, dict)]
    files += [f"sticker {s.get('name', '')}".strip() for s in raw.get("stickers") or [] if isinstance(s, dict)]
    media = ", ".join(files) if files else None
    if not content:
        if media or raw.get("embeds"):
            return Message(speaker, when, "", MEDIA, media or "embed")
        return Message(speaker, when, "", SYSTEM)
    return Message(speaker, when, content, TEXT, media)


def parse_json(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        meta: dict = {}
        count = 0
        declared = None
        with open_text(src, tracker) as fh:
            for event, path, value in JsonWalker(fh, src.basename, [("messages", "*")]).walk():
                if event == "value" and path in (("guild",), ("channel",)):
                    meta[path[0]] = value if isinstance(value, dict) else {}
                elif event == "value" and path == ("messageCount",):
                    declared = value
                elif event == "item":
                    if count == 0:
                        yield _conversation(meta, src)
                    count += 1
                    yield json_message(value)
        if isinstance(declared, int) and declared != count:
            yield Note(f"{src.basename}: messageCount says {declared:,} but the file holds {count:,} messages; "
                       "the messages themselves were counted.")


def _conversation(meta: dict, src: Source) -> Conversation:
    guild = (meta.get("guild") or {}).get("name") or ""
    channel = meta.get("channel") or {}
    cname = channel.get("name") or src.basename
    title = f"{guild} / {cname}" if guild and guild != "Direct Messages" else cname
    return Conversation(title=str(title), kind=str(channel.get("type", "")))


def _plain(speaker: str, when, content: str, files: list[str]) -> Message:
    content = content.strip()
    media = ", ".join(files) if files else None
    if not content:
        return Message(speaker, when, "", MEDIA if media else SYSTEM, media)
    if _SYSTEM.match(content):
        return Message(speaker, when, content, SYSTEM)
    return Message(speaker, when, content, TEXT, media)


def _strip_disc(name: str) -> str:
    return re.sub(r"#0{1,4}$", "", name.strip())


TXT_HEADER = re.compile(r"^\[(?P<date>[^\]\n]{4,40})\] (?P<name>.+?)(?: \(pinned\))?$")
_SECTIONS = ("{Attachments}", "{Embed}", "{Stickers}", "{Reactions}")


def parse_txt(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        yield from _parse_txt(src, tracker)


def _parse_txt(src: Source, tracker) -> Iterator:
    title = src.basename.rsplit(".", 1)[0]
    rules = 0  # lines of '=' seen: 2 end the preamble, a 3rd starts the postamble
    cur = None  # [speaker, when, content lines, attachment lines, section]
    prev_blank = True
    started = False
    for line in iter_lines(src, tracker):
        if set(line) == {"="} and len(line) >= 20:
            rules += 1
            continue
        if rules < 2:
            if line.startswith("Channel: "):
                title = line[len("Channel: "):].strip()
            continue
        if rules >= 3:
            continue
        m = TXT_HEADER.match(line)
        when = parse_loose(m.group("date")) if m else None
        if m and (when is not None or prev_blank):
            if not started:
                yield Conversation(title=title)
                started = True
            if cur is not None:
                yield _plain(cur[0], cur[1], "\n".join(cur[2]), cur[3])
            cur = [_strip_disc(m.group("name")), when, MessageLines(), MessageLines(), None]
        elif cur is not None:
            if line.strip() in _SECTIONS:
                cur[4] = line.strip()
            elif cur[4] is None:
                cur[2].append(line)
            elif cur[4] in ("{Attachments}", "{Stickers}") and line.strip():
                cur[3].append(line.strip().rsplit("/", 1)[-1])
        prev_blank = not line.strip()
    if cur is not None:
        yield _plain(cur[0], cur[1], "\n".join(cur[2]), cur[3])


def parse_csv(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    csv.field_size_limit(MAX_ITEM_CHARS)
    for src in sources:
        yield Conversation(title=src.basename.rsplit(".", 1)[0])
        with open_text(src, tracker, newline="") as fh:
            reader = csv.DictReader(bounded_lines(fh, src.basename))
            try:
                for row in reader:
                    if None in row or not row.get("Author"):
                        raise ExportInvalid(
                            f"{src.basename!r}: line {reader.line_num} does not have the columns "
                            "AuthorID,Author,Date,Content,Attachments,Reactions."
                        )
                    files = [f.rsplit("/", 1)[-1] for f in (row.get("Attachments") or "").split(",") if f.strip()]
                    yield _plain(_strip_disc(row["Author"]), parse_loose(row.get("Date")), row.get("Content") or "", files)
            except csv.Error as exc:
                raise ExportInvalid(f"{src.basename!r} is not valid CSV at line {reader.line_num} ({exc}).") from None
            except UnicodeDecodeError as exc:
                raise not_utf8(src.basename, exc) from None
