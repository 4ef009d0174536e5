"""iMessage conversations as written by imessage-exporter's TXT exporter.

Each message is a block: a date line (`May 17, 2022  5:29:42 PM`, maybe followed by
`(Read by ... after ...)`), the sender (`Me` for the owner), then the body, then a blank
line. Replies are written indented under the message they answer, tapbacks under a
`Reactions:` line; attachments appear as their file path. A date line followed by more
text on the same line is an announcement (a rename, someone leaving): a system line.
Messages are put back in time order because replies are printed out of it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Iterator

from .model import DELETED, MEDIA, SYSTEM, TEXT, Conversation, Message, MessageLines
from .sources import ProgressTracker, Source, iter_lines

DATE_LINE = re.compile(
    r"^(?P<indent> *)(?P<date>[A-Z][a-z]{2} \d{1,2}, \d{4} {1,2}\d{1,2}:\d{2}:\d{2} [AP]M)(?P<rest>.*)$"
)
_PATH = re.compile(r"^(/|~/|\./|\.\./|[A-Za-z]:\\|attachments/)\S.*\.\w{2,5}$")
_NOISE = re.compile(
    r"^(This message responded to an earlier message\.|Sent with [A-Z][a-z]+( [A-Z][a-z]+)?|"
    r"Reactions:|(Loved|Liked|Disliked|Laughed at|Emphasized|Questioned) by .+|Sticker from .+)$"
)
_UNSENT = re.compile(r"\bunsent\b", re.I)


def _when(s: str) -> datetime | None:
    try:
        return datetime.strptime(" ".join(s.split()), "%b %d, %Y %I:%M:%S %p")
    except ValueError:
        return None


def _finish(sender: str | None, when: datetime | None, lines: list[str]) -> Message:
    body: list[str] = []
    media: list[str] = []
    for line in lines:
        s = line.strip()
        if _NOISE.match(s):
            continue
        if _PATH.match(s) or s == "Attachment missing!":
            media.append(s.rsplit("/", 1)[-1])
            continue
        body.append(line.strip(" "))
    text = "\n".join(body).strip()
    media_desc = ", ".join(media) if media else None
    if sender is None:
        return Message(None, when, text, SYSTEM)
    if not text:
        return Message(sender, when, "", MEDIA if media else SYSTEM, media_desc)
    if len(text) < 60 and _UNSENT.search(text) and "\n" not in text:
        return Message(sender, when, "", DELETED)
    return Message(sender, when, text, TEXT, media_desc)


def parse_file(lines) -> list[Message]:
    out: list[Message] = []
    cur: list | None = None  # [indent, sender, when, body lines, expecting sender]
    for line in lines:
        m = DATE_LINE.match(line)
        if m:
            if cur is not None:
                out.append(_finish(cur[1], cur[2], cur[3]))
            when = _when(m.group("date"))
            rest = m.group("rest").strip()
            if rest and not rest.startswith("("):
                out.append(Message(None, when, rest, SYSTEM))
                cur = None
            else:
                cur = [len(m.group("indent")), None, when, MessageLines(), True]
            continue
        if cur is None:
            continue
        if cur[4]:
            if line.strip():
                cur[1] = line.strip()
                cur[4] = False
            continue
        cur[3].append(line[cur[0]:] if line[: cur[0]].strip() == "" else line)
    if cur is not None:
        out.append(_finish(cur[1], cur[2], cur[3]))
    out.sort(key=lambda msg: msg.time or datetime.min)
    return out


def parse(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        yield Conversation(title=src.basename.rsplit(".", 1)[0])
        yield from parse_file(iter_lines(src, tracker))
