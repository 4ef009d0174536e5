"""Turning one speaker's side of an export into chat-format training examples.

The chosen speaker becomes the "assistant" and everyone else the "user", so a trainer
that puts the loss on assistant turns learns only that speaker's voice. Consecutive
messages of one person merge into one turn; a long silence starts a new session;
each session is cut into windows of at most `max_turns` turns that end on the
speaker's turn, every speaker turn landing in exactly one window. In group chats the
other people's turns are prefixed with their names. Only text counts: placeholders,
system lines, deleted messages and forwarded text are dropped and counted.

The most recent examples (by time) become the validation split, so validation asks
"does the model sound like them later on", not "does it remember this exact chat". To keep
that honest on a chat that repeats itself (the same reply to the same prompt, canned
answers): identical examples are kept once, and in the validation split a reply that also
appears in the training split is marked `"seen": True`, so the held-out loss is never on
a reply the model trained on (it stays as context); validation examples left with no
unseen reply are removed. The report counts each.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from core.errors import ExportInvalid

from .model import TEXT, UNKNOWN_SPEAKER, ImportResult, sort_key
from .whatsapp import MARKS

_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>\"]+", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d \-().\u00a0]{5,}\d(?!\w)")


@dataclass
class ExampleSet:
    """Training and validation examples and a report of what went where."""

    train: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def normalize_name(name: str) -> str:
    """How speaker names are compared: case, width, spacing and direction marks do not matter."""
    s = unicodedata.normalize("NFKC", name or "")
    s = "".join(ch for ch in s if ch not in MARKS)
    s = s.strip().lstrip("~").strip()
    return " ".join(s.split()).casefold()


def resolve_speaker(result: ImportResult, speaker: str) -> str:
    """The speaker's name as the export spells it; `ExportInvalid` naming who exists if absent."""
    wanted = normalize_name(speaker)
    for name in result.speakers:
        if normalize_name(name) == wanted:
            return name
    listed = ", ".join(f"{n} ({c})" for n, c in list(result.speakers.items())[:20])
    more = f" and {len(result.speakers) - 20} more" if len(result.speakers) > 20 else ""
    raise ExportInvalid(
        f"{speaker!r} never writes a text message in this chat. Speakers with text messages: {listed}{more}."
    )


class Scrubber:
    """Replaces URLs, e-mail addresses and phone numbers, counting each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _phone(self, m: re.Match) -> str:
        s = m.group(0)
        digits = sum(ch.isdigit() for ch in s)
        # Dates and times are digit runs too; real numbers have 9+ digits, or 7+ after a '+'.
        if digits >= 9 or (s.startswith("+") and digits >= 7):
            self.counts["phone"] += 1
            return "[phone]"
        return s

    def __call__(self, text: str) -> str:
        text, n = _URL.subn("[url]", text)
        self.counts["url"] += n
        text, n = _EMAIL.subn("[email]", text)
        self.counts["email"] += n
        return _PHONE.sub(self._phone, text)


@dataclass
class _Turn:
    role: str
    name: str
    parts: list[str]
    time: datetime | None


def _words(text: str) -> int:
    return len(text.split())


def build_examples(
    result: ImportResult,
    speaker: str,
    *,
    scrub: bool = False,
    session_gap: timedelta = timedelta(hours=6),
    max_turns: int = 16,
    val_fraction: float = 0.1,
    count_tokens: Callable[[str], int] | None = None,
) -> ExampleSet:
    """Examples `{"messages": [{"role", "content"}...], "time": iso}` with `speaker` as the assistant.

    `max_turns` caps the turns (user and assistant) of one example; `val_fraction` of the
    examples, the most recent ones, go to validation. `time` is the time of an example's
    last message (None for formats without times).
    """
    if max_turns < 2:
        raise ValueError("max_turns must be at least 2 (a user turn and a reply)")
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    target = resolve_speaker(result, speaker)
    scrubber = Scrubber() if scrub else None
    dropped: Counter[str] = Counter()
    examples: list[tuple[datetime, int, dict]] = []
    sessions = 0

    def emit(window: list[_Turn], group: bool) -> None:
        msgs = []
        for t in window:
            text = "\n".join(t.parts)
            if t.role == "user" and group:
                name = scrubber(t.name) if scrubber else t.name
                text = f"{name}: {text}"
            if msgs and msgs[-1]["role"] == t.role == "user":  # several others in a row: one user turn
                msgs[-1]["content"] += "\n" + text
            else:
                msgs.append({"role": t.role, "content": text})
        when = window[-1].time
        examples.append((sort_key(when), len(examples), {"messages": msgs, "time": when.isoformat() if when else None}))

    def flush(turns: list[_Turn], group: bool) -> None:
        nonlocal sessions
        if not turns:
            return
        if not any(t.role == "assistant" for t in turns):
            dropped["turns in sessions without the speaker"] += len(turns)
            return
        sessions += 1
        # Merge runs of user turns first so max_turns counts alternating turns.
        merged: list[list[_Turn]] = []
        for t in turns:
            if merged and merged[-1][0].role == t.role == "user":
                merged[-1].append(t)
            else:
                merged.append([t])
        window: list[list[_Turn]] = []
        for unit in merged:
            window.append(unit)
            if len(window) >= max_turns:
                if window[-1][0].role == "assistant":
                    emit([t for u in window for t in u], group)
                    window = []
                else:
                    emit([t for u in window[:-1] for t in u], group)
                    window = [window[-1]]
        while window and window[-1][0].role == "user":
            dropped["trailing turns with no reply"] += len(window.pop())
        if any(u[0].role == "assistant" for u in window):
            emit([t for u in window for t in u], group)

    turns: list[_Turn] = []
    cur_idx = -1
    group = False
    last_time: datetime | None = None
    for idx, msg in result.iter_messages():
        if idx != cur_idx:
            flush(turns, group)
            turns, cur_idx, last_time = [], idx, None
            conv = result.conversations[idx] if idx < len(result.conversations) else None
            group = bool(conv and conv.is_group)
        if msg.kind != TEXT:
            dropped[msg.kind] += 1
            continue
        if msg.forwarded:
            dropped["forwarded"] += 1
            continue
        text = msg.text.strip()
        if not text:
            dropped["empty"] += 1
            continue
        if msg.time is not None and last_time is not None and sort_key(msg.time) - sort_key(last_time) > session_gap:
            flush(turns, group)
            turns = []
        if msg.time is not None:
            last_time = msg.time
        name = msg.speaker or UNKNOWN_SPEAKER
        role = "assistant" if name == target else "user"
        if scrubber:
            text = scrubber(text)
        if turns and turns[-1].name == name:
            turns[-1].parts.append(text)
            turns[-1].time = msg.time or turns[-1].time
        else:
            turns.append(_Turn(role, name, [text], msg.time))
    flush(turns, group)

    if not examples:
        raise ExportInvalid(
            f"{target!r} writes text, but never in reply to anyone within a session, so no training "
            "example could be made. Try a longer session gap."
        )
    examples.sort(key=lambda e: (e[0], e[1]))
    ordered, duplicates = _unique([e[2] for e in examples])
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    train, validation = ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]
    validation, seen_replies, seen_removed = _unseen_replies(train, validation)

    counter = count_tokens or _words
    tokens = assistant_tokens = turns_kept = assistant_turns = 0
    for ex in train + validation:
        for m in ex["messages"]:
            k = counter(m["content"])
            tokens += k
            turns_kept += 1
            if m["role"] == "assistant":
                assistant_tokens += k
                assistant_turns += 1
    report = {
        "speaker": target,
        "format": result.format,
        "messages_per_speaker": dict(result.speakers),
        "examples": len(train) + len(validation),
        "train": len(train),
        "validation": len(validation),
        "held_out_honesty": {
            "duplicate_examples_removed": duplicates,
            "validation_replies_seen_in_training": seen_replies,
            "validation_examples_removed": seen_removed,
        },
        "sessions": sessions,
        "turns_kept": turns_kept,
        "assistant_turns": assistant_turns,
        "tokens": tokens,
        "assistant_tokens": assistant_tokens,
        "token_counter": "count_tokens" if count_tokens else "whitespace words (no tokenizer given: an estimate)",
        "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if scrubber:
        report["scrubbed"] = {k: scrubber.counts.get(k, 0) for k in ("url", "email", "phone")}
    return ExampleSet(train=train, validation=validation, report=report)


def _key(example: dict) -> tuple:
    return tuple((m["role"], m["content"]) for m in example["messages"])


def _unique(examples: list[dict]) -> tuple[list[dict], int]:
    """The examples with identical ones (same context, same reply) kept once, the earliest."""
    seen, kept = set(), []
    for ex in examples:
        key = _key(ex)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept, len(examples) - len(kept)


def _unseen_replies(train: list[dict], validation: list[dict]) -> tuple[list[dict], int, int]:
    """Validation whose replies found in training are marked seen (context, no loss);
    examples left without an unseen reply go. Returns (validation, replies marked, examples removed)."""
    trained = {m["content"] for ex in train for m in ex["messages"] if m["role"] == "assistant"}
    kept, marked, removed = [], 0, 0
    for ex in validation:
        msgs = [dict(m, seen=True) if m["role"] == "assistant" and m["content"] in trained else m for m in ex["messages"]]
        marked += sum(bool(m.get("seen")) for m in msgs)
        if any(m["role"] == "assistant" and not m.get("seen") for m in msgs):
            kept.append({**ex, "messages": msgs})
        else:
            removed += 1
    return kept, marked, removed
