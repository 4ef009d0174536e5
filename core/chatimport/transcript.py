"""Plain transcripts: `Name: text` lines, with other lines continuing the message above.

Without timestamps anything before a colon could be a name ("Note: bring snacks"), so
names are found first: a file is read once to count the `Word: ` prefixes, and only those
that recur (the people actually talking) start messages on the second read.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Iterator

from .model import TEXT, Conversation, Message, MessageLines
from .sources import ProgressTracker, Source, iter_lines

LINE = re.compile(r"^(?P<name>[^\s:\[\]<>][^:\[\]<>\n]{0,39}?)\s*:[ \t\u00a0](?P<text>.*)$")
MAX_WORDS = 4


def candidate(line: str) -> tuple[str, str] | None:
    m = LINE.match(line.strip("\ufeff"))
    if not m:
        return None
    name = m.group("name").strip()
    if not name or len(name.split()) > MAX_WORDS or name.lower().startswith(("http", "https")):
        return None
    return name, m.group("text")


def find_speakers(lines: Iterable[str], limit: int = 200_000) -> set[str]:
    counts: Counter[str] = Counter()
    for n, line in enumerate(lines):
        if n >= limit:
            break
        c = candidate(line)
        if c:
            counts[c[0]] += 1
    total = sum(counts.values())
    # A speaker recurs: at least twice and at least 1% of the named lines (or it is the only name).
    return {name for name, k in counts.items() if (k >= 2 and k * 100 >= total) or len(counts) == 1}


def parse_lines(lines: Iterable[str], speakers: set[str]) -> Iterator[Message]:
    cur: list | None = None
    for line in lines:
        c = candidate(line)
        if c and c[0] in speakers:
            if cur is not None:
                yield Message(cur[0], None, "\n".join(cur[1]).strip(), TEXT)
            cur = [c[0], MessageLines(c[1])]
        elif cur is not None:
            cur[1].append(line)
    if cur is not None:
        yield Message(cur[0], None, "\n".join(cur[1]).strip(), TEXT)


def parse(sources: list[Source], tracker: ProgressTracker | None) -> Iterator:
    for src in sources:
        speakers = find_speakers(iter_lines(src))
        yield Conversation(title=src.basename.rsplit(".", 1)[0])
        for msg in parse_lines(iter_lines(src, tracker), speakers):
            if msg.text:
                yield msg
