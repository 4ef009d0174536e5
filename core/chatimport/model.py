"""The one conversation model every chat-export importer produces.

A `Message` is one exported message; its `kind` says whether it is the speaker's own
words ("text") or something to keep apart from them (a media placeholder, a system
line, a deleted or view-once message, a poll, a reaction). An `ImportResult` holds the
conversations of one export and the counts that `inspect` reports.

Large exports are not held in memory: their conversations re-read the file when
iterated (see `LazyMessages`), so only the counts live in the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

# Kinds of message. Only TEXT is the speaker's voice; the rest are counted and skipped.
TEXT = "text"
MEDIA = "media"  # a photo/video/file/sticker placeholder with no words of the speaker
SYSTEM = "system"  # "X joined", encryption notices, calls, renames
DELETED = "deleted"
VIEW_ONCE = "view_once"
POLL = "poll"
REACTION = "reaction"  # a reaction sent as its own message ("Reacted 😂 to your message")
LABEL = "label"  # a body repeated like an app's label, set aside by the repetition guard (see guard.py)
KINDS = (TEXT, MEDIA, SYSTEM, DELETED, VIEW_ONCE, POLL, REACTION, LABEL)

UNKNOWN_SPEAKER = "(unknown)"

# One message's text is cut to this length. Chat apps cap a message far below it (WhatsApp
# 65,536 characters, Telegram 4,096, Discord 4,000), the store keeps at most 256 KB of one,
# and 1M characters (~250k tokens) is beyond any model's context, so only a damaged or
# hostile export reaches it; cutting (with a note) keeps the rest of such an export usable.
MAX_MESSAGE_CHARS = 1_000_000
# One line of a text export, or one JSON item (a message; a whole conversation in LLM
# datasets), is refused beyond this, before more of it is read. 8x the message cap leaves
# room for JSON escapes and Telegram's `text_entities` (which repeat the text), and 8M
# characters is ~2M tokens for a dataset record; reading one costs at most ~100 MB even
# in 4-byte characters.
MAX_ITEM_CHARS = 8 * MAX_MESSAGE_CHARS


@dataclass(slots=True)
class Message:
    """One exported message."""

    speaker: str | None  # None for system lines that have no author
    time: datetime | None  # naive local time as the export shows it, aware when the export is UTC
    text: str  # the speaker's words only; empty for placeholders
    kind: str = TEXT
    media: str | None = None  # what was attached (file name or type), kept apart from `text`
    forwarded: bool = False  # forwarded from someone else: not the speaker's voice
    cut: bool = False  # the text was longer than MAX_MESSAGE_CHARS and was cut to it
    # Which app-generated placeholder this was ("image", "document", "location", "deleted",
    # "call"...; see placeholders.py), or None for the speaker's words and unrecognised lines.
    placeholder: str | None = None

    def __post_init__(self) -> None:
        # Every parser builds its messages here, so the cap holds for every format.
        if len(self.text) > MAX_MESSAGE_CHARS:
            self.text = self.text[:MAX_MESSAGE_CHARS]
            self.cut = True


class MessageLines(list):
    """The lines of one message as a parser gathers them. Lines that arrive once the message
    is past MAX_MESSAGE_CHARS are dropped (`Message` cuts there anyway), so a message of
    millions of lines cannot fill memory."""

    __slots__ = ("chars",)

    def __init__(self, *lines: str):
        super().__init__(lines)
        self.chars = sum(map(len, lines))

    def append(self, line: str) -> None:
        if self.chars <= MAX_MESSAGE_CHARS:
            self.chars += len(line) + 1
            super().append(line)


@dataclass(frozen=True)
class Note:
    """Something a parser decided that the user should hear about (a guessed date order...)."""

    text: str


@dataclass
class Conversation:
    """One chat: a title and its messages in time order."""

    title: str
    messages: list[Message] | "LazyMessages" = field(default_factory=list)
    kind: str = ""  # the exporter's own label (personal_chat, GuildTextChat...), if any
    speakers: dict[str, int] = field(default_factory=dict)  # name -> text messages

    @property
    def is_group(self) -> bool:
        """More than two people wrote text here (their names then prefix their turns)."""
        return len(self.speakers) > 2


class LazyMessages:
    """The messages of one conversation of a large export, read again from the file on demand.

    Iterating re-runs the parser, so memory stays bounded whatever the file size.
    Indexing materialises the whole conversation: avoid it on huge exports.
    """

    def __init__(self, reparse: Callable[[], Iterator[tuple[int, Message]]], index: int, count: int):
        self._reparse = reparse
        self._index = index
        self._count = count

    def __iter__(self) -> Iterator[Message]:
        for idx, msg in self._reparse():
            if idx == self._index:
                yield msg
            elif idx > self._index:
                return

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, item):
        return list(self)[item]


def sort_key(t: datetime | None) -> datetime:
    """Compare naive and aware times without a TypeError (aware ones as UTC)."""
    if t is None:
        return datetime.min
    if t.tzinfo is not None:
        return t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


@dataclass
class ImportResult:
    """What one export holds, and the counts `inspect` shows."""

    format: str  # e.g. "whatsapp", "telegram", "discord-json" (see detect.FORMATS)
    source: str
    conversations: list[Conversation] = field(default_factory=list)
    speakers: dict[str, int] = field(default_factory=dict)  # name -> text messages, most first
    message_count: int = 0  # every message of every kind
    skipped: dict[str, int] = field(default_factory=dict)  # kind -> count, for kinds other than text
    placeholders: dict[str, int] = field(default_factory=dict)  # placeholder kind -> count (Message.placeholder)
    first: datetime | None = None
    last: datetime | None = None
    notes: list[str] = field(default_factory=list)  # decisions the user should know about
    _reparse: Callable[[], Iterator[tuple[int, Message]]] | None = field(default=None, repr=False)

    def iter_messages(self) -> Iterator[tuple[int, Message]]:
        """(conversation index, message) over the whole export in one pass."""
        if self._reparse is not None:
            yield from self._reparse()
            return
        for idx, conv in enumerate(self.conversations):
            for msg in conv.messages:
                yield idx, msg

    def summary(self) -> dict:
        """The JSON object `inspect --json` prints."""
        return {
            "format": self.format,
            "source": self.source,
            "conversations": len(self.conversations),
            "messages": self.message_count,
            "text_messages": sum(self.speakers.values()),
            "speakers": dict(self.speakers),
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "skipped": dict(self.skipped),
            "placeholders": dict(self.placeholders),
            "notes": list(self.notes),
        }


def count_into(result: ImportResult, conv: Conversation, msg: Message) -> None:
    """Add one message to the running counts of its conversation and of the result."""
    result.message_count += 1
    if msg.kind == TEXT:
        name = msg.speaker or UNKNOWN_SPEAKER
        conv.speakers[name] = conv.speakers.get(name, 0) + 1
        result.speakers[name] = result.speakers.get(name, 0) + 1
    else:
        result.skipped[msg.kind] = result.skipped.get(msg.kind, 0) + 1
    if msg.placeholder is not None:
        result.placeholders[msg.placeholder] = result.placeholders.get(msg.placeholder, 0) + 1
    if msg.time is not None:
        key = sort_key(msg.time)
        if result.first is None or key < sort_key(result.first):
            result.first = msg.time
        if result.last is None or key > sort_key(result.last):
            result.last = msg.time


def sorted_counts(counts: dict[str, int]) -> dict[str, int]:
    """Most first, then by name, so reports are stable."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
