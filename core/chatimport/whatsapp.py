"""WhatsApp text exports (Android and iOS, any locale), and the line format Signal shares.

A message starts with a line that begins with a timestamp: `12/9/20, 23:55 - Bob: hi`
(Android) or `[3/27/22, 21:41:35] Bob: hi` (iOS); every other line continues the message
before it. The timestamp layout follows the phone's locale, so the header pattern
accepts any order of date and time, `/ . -` separators, 12- or 24-hour clocks with
localised AM/PM markers, dotted times, direction marks and no-break spaces anywhere,
and any Unicode digits (Python's `\\d` and `int()` read Arabic-Indic digits natively).

Day/month order is decided once per file, never per line: the first date with a field
above 12 settles it; a file with none is read the way that keeps its dates in order.

Calendars: Buddhist-era years (2565, or `2565 BE`: year - 543), Japanese eras before
or in place of the year (`R4/3/27`, `3/27/R4`, `令和4`) and ROC/Minguo years (`111`,
`民國111`: year + 1911) are read as the same instants as a Gregorian export.

Placeholders (media, deleted, calls, locations, view-once, polls, system lines) are told
apart from speech in placeholders.py, so they never reach the training text.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Iterable, Iterator

from .model import SYSTEM, Conversation, Message, MessageLines
from .placeholders import MARKS, classify
from .sources import ProgressTracker, Source, iter_lines

_X = f"[{MARKS}]*"
_SP = "[ \u00a0\u202f\u2009]"
_AMPM = rf"(?:[AaPp]\.?{_SP}?[Mm]\.?|午前|午後|上午|下午|오전|오후|ص|م|vorm\.|nachm\.)"
_PM = ("p", "午後", "下午", "오후", "م", "nachm")
_ERA = r"(?:令和|平成|昭和|大正|明治|民國|民国|[RHSTM]\.?)"
_ERA_BASE = {"R": 2018, "令和": 2018, "H": 1988, "平成": 1988, "S": 1925, "昭和": 1925,
             "T": 1911, "大正": 1911, "M": 1867, "明治": 1867, "民國": 1911, "民国": 1911}
_BE = r"(?:B\.?E\.?|พ\.ศ\.)"  # Buddhist era after the year: "3/27/2565 BE"


def _date(n: int) -> str:
    sep = rf"{_X}[./\-]{_X}{_SP}?{_X}"
    return (rf"(?P<era{n}>{_ERA})?(?P<a{n}>\d{{1,4}}){sep}(?P<b{n}>\d{{1,2}}){sep}(?P<erc{n}>{_ERA})?"
            rf"(?P<c{n}>\d{{1,4}})(?:{_SP}?(?P<be{n}>{_BE}))?{_X}\.?")


def _time(n: int) -> str:
    sep = rf"{_X}[:.]{_X}"
    return (
        rf"(?:(?P<pa{n}>{_AMPM}){_SP}?{_X})?(?P<h{n}>\d{{1,2}}){sep}(?P<mi{n}>\d{{2}})"
        rf"(?:{sep}(?P<s{n}>\d{{2}}))?{_X}\.?(?:{_SP}*{_X}(?P<ap{n}>{_AMPM}))?"
    )


_DT_SEP = rf"{_X}(?:[,،]{_X}{_SP}*|{_SP}+){_X}"
_STAMP = rf"(?:{_date(1)}{_DT_SEP}{_time(1)}|{_time(2)}{_DT_SEP}{_date(2)})"
ANDROID = re.compile(rf"{_X}{_STAMP}{_X}{_SP}?[-–]{_SP}(?P<body>.*)", re.S)
IOS = re.compile(rf"{_X}\[{_X}{_STAMP}{_X}\]{_X}{_SP}?(?P<body>.*)", re.S)
# A header starts with a digit, '[', an era letter or an AM/PM word (after marks): a cheap pre-check.
_STARTS = re.compile(rf"{_X}(?:\d|\[|{_ERA}|{_AMPM})")

DMY, MDY = "DMY", "MDY"


def match_header(line: str) -> re.Match | None:
    """The timestamp header match of a line, or None for a continuation line."""
    if not _STARTS.match(line):
        return None
    return IOS.match(line) or ANDROID.match(line)


def _year_first(m: re.Match, n: int) -> bool:
    return bool(m.group(f"era{n}")) or len(m.group(f"a{n}")) >= 3


_GROUPS = tuple(tuple(f"{g}{n}" for g in ("a", "b", "c", "era", "erc", "be", "h", "mi", "s", "pa", "ap"))
                for n in (1, 2))


def header_datetime(m: re.Match, order: str) -> datetime | None:
    """The header's time under the file's day/month order; None if it is not a real date."""
    a, b, c, era, erc, be, h, mi, s, pa, ap = m.group(*_GROUPS[0 if m.group("a1") is not None else 1])
    if era and erc:
        return None
    if era or len(a) >= 3:
        y, mo, d = int(a), int(b), int(c)
    elif order == MDY:
        mo, d, y = int(a), int(b), int(c)
    else:
        d, mo, y = int(a), int(b), int(c)
    era = era or erc
    if era:
        y += _ERA_BASE[era.rstrip(".")]
    elif be or y >= 2400:  # Buddhist calendar (Thai locale): 2565 BE is 2022 CE
        y -= 543
    elif y < 100:
        y += 2000
    elif y < 1000:  # ROC/Minguo calendar (Taiwan): year 111 is 2022 CE
        y += 1911
    hour = int(h)
    ampm = pa or ap
    if ampm:
        if hour > 12:
            return None
        pm = ampm.lower().replace(" ", "").startswith(_PM)
        if pm and hour < 12:
            hour += 12
        elif not pm and hour == 12:
            hour = 0
    try:
        return datetime(y, mo, d, hour, int(mi), int(s) if s else 0)
    except ValueError:
        return None


def decide_order(lines: Iterable[str]) -> tuple[str, str | None]:
    """Day/month order for the whole file, and a note when it had to be guessed."""
    seq: list[tuple[int, int, int]] = []
    us_hint = 0
    for line in lines:
        m = match_header(line)
        if m is None:
            continue
        n = 1 if m.group("a1") is not None else 2
        if _year_first(m, n):
            continue
        a, b, c = int(m.group(f"a{n}")), int(m.group(f"b{n}")), int(m.group(f"c{n}"))
        if a > 12 and b <= 12:
            return DMY, None
        if b > 12 and a <= 12:
            return MDY, None
        if len(seq) < 20000:
            seq.append((a, b, c))
        if m.group(f"ap{n}") or m.group(f"pa{n}"):
            us_hint += 1
    if not seq:
        return DMY, None

    def backwards(order: str) -> int:
        keys = [(c, b, a) if order == DMY else (c, a, b) for a, b, c in seq]
        return sum(1 for x, y in zip(keys, keys[1:]) if y < x)

    dmy, mdy = backwards(DMY), backwards(MDY)
    if dmy != mdy:
        return (DMY if dmy < mdy else MDY), None
    guess = MDY if us_hint > len(seq) // 2 else DMY
    which = "month/day" if guess == MDY else "day/month"
    return guess, f"No date in this chat shows whether it is day/month or month/day; read as {which}."


# ---- the body of a message -----------------------------------------------------------------

_AUTHOR = re.compile(r"(?P<author>[^:\n\"“”]{1,80}?):(?:[ \u00a0\u202f]|$)")


def clean_name(name: str) -> str:
    name = name.strip(MARKS + " \u00a0\u202f\t")
    if name.startswith("~"):  # WhatsApp marks people who are not in the contacts with "~ "
        name = name[1:].strip(MARKS + " \u00a0\u202f\t")
    return name


def split_author(body: str, known: set[str]) -> tuple[str | None, str]:
    """(author, text) of a header body; author None for system lines."""
    m = _AUTHOR.match(body)
    if m:
        return clean_name(m.group("author")), body[m.end():]
    head, sep, rest = body.partition(":")
    if sep and clean_name(head) in known:  # "John Doe:." - no space, but a known author
        return clean_name(head), rest
    return None, body


# ---- the file --------------------------------------------------------------------------------

def _finish(author: str | None, when: datetime | None, lines: list[str], flavor: str) -> Message:
    text = "\n".join(lines)
    placeholder = None
    if flavor == "signal":
        from .signal_export import classify_signal

        kind, body, media = classify_signal(text)
    else:
        kind, body, media, placeholder = classify(text, author is not None)
    speaker = author if kind != SYSTEM else None
    return Message(speaker=speaker, time=when, text=body, kind=kind, media=media, placeholder=placeholder)


def parse_lines(lines: Iterable[str], order: str, flavor: str = "whatsapp") -> Iterator[Message]:
    """Messages of one chat file given its day/month order."""
    known: set[str] = set()
    names: dict[str, str] = {}  # one str object per name, so a big chat shares them
    cur: tuple[str | None, datetime | None, list[str]] | None = None
    for line in lines:
        m = match_header(line)
        when = header_datetime(m, order) if m else None
        if when is None:  # a continuation line (or a date-like line that is no real date)
            if cur is not None:
                cur[2].append(line)
            continue
        if cur is not None:
            yield _finish(cur[0], cur[1], cur[2], flavor)
        author, text = split_author(m.group("body"), known)
        if author is not None:
            if not author:
                author = None
            else:
                author = names.setdefault(author, author)
                known.add(author)
        cur = (author, when, MessageLines(text))
    if cur is not None:
        yield _finish(cur[0], cur[1], cur[2], flavor)


def chat_title(source: Source) -> str:
    stem = source.basename.rsplit(".", 1)[0]
    for prefix in ("WhatsApp Chat with ", "WhatsApp Chat - ", "WhatsApp-Chat mit ", "Chat de WhatsApp con "):
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def parse(sources: list[Source], tracker: ProgressTracker | None, flavor: str = "whatsapp") -> Iterator:
    """Conversation headers, notes and messages of WhatsApp (or Signal) text files."""
    from .model import Note

    for src in sources:
        order, note = decide_order(iter_lines(src))
        if note:
            yield Note(f"{src.basename}: {note}")
        yield Conversation(title=chat_title(src))
        yield from parse_lines(iter_lines(src, tracker), order, flavor)
