"""`load_export`: from a path to an `ImportResult`, whatever the format.

The parser chosen by `detect` runs once as a stream to count everything. Small exports
keep their messages in lists; exports above `LAZY_BYTES` keep only the counts, and their
conversations re-read the file when iterated, so memory stays bounded however big the
file is. For WhatsApp, the repetition guard (guard.py) watches that first pass; the
bodies it sets aside are then recounted (and re-applied whenever a large export is
re-read). Low-level failures (bad bytes, broken zips, I/O errors) become the domain
errors with a sentence for the user.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.errors import ChorusError, ExportInvalid, UnsafeArchive

from .detect import FORMATS, detect
from .guard import RepetitionGuard
from .model import (
    MAX_MESSAGE_CHARS,
    Conversation,
    ImportResult,
    LazyMessages,
    Message,
    Note,
    count_into,
    sorted_counts,
)
from .sources import Progress, ProgressTracker, encoding_note, list_sources

LAZY_BYTES = 16 * 1024**2  # above this, messages are re-read from the file instead of kept (~250 B each)
GUARDED = {"whatsapp"}  # formats whose exports write localised labels in place of messages


def _guarded(items: Iterator, label: str) -> Iterator:
    """Turn the errors a malformed file can raise deep in a parser into one clear message."""
    try:
        yield from items
    except ChorusError:
        raise
    except UnicodeDecodeError as exc:
        raise ExportInvalid(
            f"{label!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded). "
            "Export the chat again, or re-save the file as UTF-8."
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise UnsafeArchive(f"The zip {label!r} is damaged or truncated ({exc}); download it again.") from None
    except RecursionError:
        raise ExportInvalid(f"{label!r} is nested too deeply to be a chat export.") from None
    except OSError as exc:
        raise ExportInvalid(f"{label!r} could not be read ({exc.strerror or exc}).") from None


def _numbered(items: Iterator) -> Iterator[tuple[int, Message]]:
    idx = -1
    for item in items:
        if isinstance(item, Conversation):
            idx += 1
        elif isinstance(item, Message):
            yield max(idx, 0), item


def _recount(result: ImportResult, messages: Iterable[tuple[int, Message]]) -> None:
    """Count every message again (after the guard changed some kinds)."""
    result.speakers, result.skipped, result.placeholders = {}, {}, {}
    result.message_count, result.first, result.last = 0, None, None
    for c in result.conversations:
        c.speakers = {}
    for idx, msg in messages:
        count_into(result, result.conversations[idx], msg)


def load_export(path: str | os.PathLike, progress: Progress | None = None, *, keep: Iterable[str] = ()) -> ImportResult:
    """Read a chat export (file, zip or folder) into conversations of messages.

    `progress(done_bytes, total_bytes)` is called as the file is read. `keep`: bodies
    the repetition guard would set aside as labels that are someone's words after all.
    Raises `ExportFormatUnknown`, `ExportInvalid` or `UnsafeArchive` with a message for the user.
    """
    label = Path(path).name or str(path)
    sources = list_sources(path)
    fmt, chosen = detect(sources, label)
    parser = FORMATS[fmt][1]
    total = sum(s.size for s in chosen)
    lazy = total > LAZY_BYTES
    tracker = ProgressTracker(progress, total)
    result = ImportResult(format=fmt, source=str(path))
    guard = RepetitionGuard(keep) if fmt in GUARDED else None
    conv: Conversation | None = None
    counts: list[int] = []
    cut = 0
    for item in _guarded(parser(chosen, tracker), label):
        if isinstance(item, Note):
            result.notes.append(item.text)
            continue
        if isinstance(item, Conversation):
            conv = item
            result.conversations.append(conv)
            counts.append(0)
            continue
        if conv is None:  # a parser that never named its conversation
            conv = Conversation(title=label)
            result.conversations.append(conv)
            counts.append(0)
        count_into(result, conv, item)
        if guard is not None:
            guard.see(item)
        counts[-1] += 1
        cut += item.cut
        if not lazy:
            conv.messages.append(item)
    tracker.finish()
    result.notes[:0] = [n for n in map(encoding_note, chosen) if n]
    reparse: Callable[[], Iterator[tuple[int, Message]]] = lambda: _numbered(_guarded(parser(chosen, None), label))
    if guard is not None and guard.decide():
        if lazy:
            plain = reparse
            reparse = lambda: ((i, guard.apply(m)) for i, m in plain())  # noqa: E731
            _recount(result, reparse())
        else:
            _recount(result, ((i, guard.apply(m)) for i, c in enumerate(result.conversations) for m in c.messages))
    if guard is not None:
        result.notes.extend(guard.notes())
    if cut:
        result.notes.append(f"{cut:,} message{'s' if cut > 1 else ''} longer than {MAX_MESSAGE_CHARS:,} characters "
                            f"{'were' if cut > 1 else 'was'} cut to that length.")

    if result.message_count == 0:
        raise ExportInvalid(f"{label!r} is a {FORMATS[fmt][0]} but holds no messages.")
    if not result.speakers:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted_counts(result.skipped).items())
        raise ExportInvalid(f"{label!r} holds no messages written by anyone, only {kinds}.")
    result.speakers = sorted_counts(result.speakers)
    result.skipped = sorted_counts(result.skipped)
    result.placeholders = sorted_counts(result.placeholders)
    for c in result.conversations:
        c.speakers = sorted_counts(c.speakers)
    if lazy:
        result._reparse = reparse
        for i, c in enumerate(result.conversations):
            c.messages = LazyMessages(reparse, i, counts[i])
    return result
