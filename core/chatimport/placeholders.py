"""What WhatsApp writes instead of a message, in any phone language, told apart from speech.

An export replaces media, deleted messages, calls and locations with generated text in
the phone's language. Three layers keep that text out of anyone's voice:

1. structure, which needs no language: on Android a generated placeholder is a whole
   message in angle brackets (`<Média vynechány>`); on iOS a generated label follows a
   left-to-right mark (U+200E), also after a file name (`CV.pdf • ‎2 pages ‎document
   omitted`); an attachment line is `name.ext (words)`; a shared location is
   `word: https://maps.google.com/?q=lat,lon` (or an Apple Maps / foursquare link);
2. `whatsapp_labels.json`, WhatsApp's own labels in the languages with the most users,
   matched whole after direction marks, spaces, a final '.' and case are dropped;
3. the repetition guard (guard.py), run over the whole file, for what both miss.

`classify` returns (kind, text, media, placeholder): `placeholder` names the label
("image", "document", "location", "deleted", "call"...) for `inspect --json`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from .model import DELETED, MEDIA, POLL, SYSTEM, TEXT, VIEW_ONCE

MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_STRIP = MARKS + " \u00a0\u202f\t\r\n"
LABELS_FILE = Path(__file__).with_name("whatsapp_labels.json")
MAX_LABEL_CHARS = 120  # no WhatsApp label is longer; longer bodies skip the table lookup
_KIND = {"media": MEDIA, "deleted": DELETED, "system": SYSTEM, "view_once": VIEW_ONCE, "text": TEXT}
_MARK_RE = re.compile(f"[{MARKS}]")
_SPACES = re.compile(r"[\s\u00a0\u202f]+")


def norm(s: str) -> str:
    """How a body is compared with the table: no marks, one space, no final '.', no <>, no case."""
    s = _SPACES.sub(" ", _MARK_RE.sub("", s)).strip(" .。।")
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip(" .。")
    return s.casefold()


class LabelTable:
    """The label file, indexed: exact bodies, edited suffixes, and name templates."""

    def __init__(self, data: dict):
        self.languages: dict[str, dict] = data["languages"]
        kinds = data["kinds"]
        self.exact: dict[str, tuple[str, str]] = {}
        self.edited: list[str] = []
        templates: list[tuple[str, tuple[str, str]]] = []
        for lang in self.languages.values():
            for key, labels in lang.items():
                if key == "name":
                    continue
                kind, placeholder = kinds[key]
                for label in labels:
                    if key == "edited":
                        self.edited.append(label)
                    elif "{}" in label:
                        templates.append((label, (_KIND[kind], placeholder)))
                    elif key == "location" and len(label.split()) == 1:
                        continue  # a lone word ("Position", "Hely") can be speech: only `word: <maps link>` counts
                    else:
                        self.exact.setdefault(norm(label), (_KIND[kind], placeholder))
        self.edited.sort(key=len, reverse=True)
        self.templates = [
            (re.compile("^" + ".+?".join(re.escape(norm(p)) for p in t.split("{}")) + "$", re.S), kp)
            for t, kp in templates
        ]

    def template(self, key: str) -> tuple[str, str] | None:
        for rx, kp in self.templates:
            if rx.match(key):
                return kp
        return None


@lru_cache(maxsize=1)
def table() -> LabelTable:
    return LabelTable(json.loads(LABELS_FILE.read_text(encoding="utf-8")))


# ---- structure -----------------------------------------------------------------------------

_ANGLE = re.compile(r"^<[^<>\n]*\w[^<>\n]*>$")  # Android: a whole message in angle brackets
_FILE_ATTACHED = re.compile(r"^\S[^\n]*\.\w{1,8} \([^()\n]{3,40}\)$")  # IMG-1.jpg (file attached)
# iOS: a file name (with an extension, or `• details`) then U+200E and the label.
_IOS_FILE = re.compile(r"^[^\n\u200e]*?(?:\.\w{1,8}\b[^\n\u200e]*|\s•\s[^\n]*?)\s*\u200e[^\u200e\n]{2,60}$")
_MAPS = (r"https?://(?:maps\.google\.[a-z.]+/|(?:www\.)?google\.[a-z.]+/maps|goo\.gl/maps/|maps\.app\.goo\.gl/|"
         r"maps\.apple\.com/|(?:[a-z]+\.)?foursquare\.com/)\S*")
_LOCATION = re.compile(rf"^[^\s:<>/]{{1,30}}(?: [^\s:<>/]{{1,30}}){{0,3}}:\s*{_MAPS}$", re.I)
_VIEW_ONCE = re.compile(r"view[ -]once|einmalansicht|ver una vez|visualização única|vue unique|"
                        r"visualizzazione singola|eenmalige weergave|одноразов", re.I)
_VIEW_ONCE_HINTS = ("once", "einmal", "vez", "única", "unique", "singola", "eenmalig", "одноразов")
_MEDIA_WORDS = re.compile(
    r"\b(omitted|ausgeschlossen|weggelassen|omis|omise|omitid[oa]|absente|omess[ioa]|ocultad[oa]|oculta|oculto|"
    r"weggelaten|отсутству\w*|dahil edilmedi|tidak disertakan|pominięt\w*)\b|省略|忽略|なし|استبعاد|محذوف",
    re.I,
)
_POLL = ("POLL:", "UMFRAGE:", "ENCUESTA:", "SONDAGE:", "SONDAGGIO:", "ENQUETE:", "PEILING:", "ОПРОС:", "ANKET:")
_OPTION = re.compile(r"^(OPTION|OPCIÓN|OPZIONE|OPÇÃO|OPTIE|ВАРИАНТ|SEÇENEK)\b", re.M)


def _first_line(t: str) -> tuple[str, str]:
    first, _, rest = t.partition("\n")
    return first.strip(_STRIP), rest.strip()


def _surely_plain(t: str) -> bool:
    """True when no rule of `classify_full` could apply: the cheap path for most messages.

    Each test mirrors one rule; it only has to let through what those rules would reject.
    """
    if not t or t[0] == "<" or t[-1] == ">" or "\u200e" in t or t.startswith(_POLL):
        return False
    first = t.split("\n", 1)[0].strip(_STRIP)
    if first.endswith(")") or ("://" in first and _LOCATION.match(first)):
        return False
    low = first.casefold()
    if low == "null" or (len(first) <= 80 and any(h in low for h in _VIEW_ONCE_HINTS)):
        return False
    if len(first) <= 60 and len(first.split()) <= 3 and _MEDIA_WORDS.search(first):
        return False
    return len(t) > MAX_LABEL_CHARS or norm(t) not in table().exact


def classify(text: str, has_author: bool) -> tuple[str, str, str | None, str | None]:
    """(kind, text, media, placeholder) for one message body (everything after `Name: `)."""
    if has_author and not text.lstrip(" \u00a0").startswith(("\u200e", "\u200f")):
        t = text.strip(_STRIP)
        if _surely_plain(t):
            return TEXT, t, None, None
    return classify_full(text, has_author)


def classify_full(text: str, has_author: bool) -> tuple[str, str, str | None, str | None]:
    """`classify` without the shortcut: every rule, in order."""
    tab = table()
    lrm = text.lstrip(" \u00a0").startswith(("\u200e", "\u200f"))
    t = text.strip(_STRIP)
    for suffix in tab.edited:  # "<This message was edited>" after the words: the words stay
        if t.endswith(suffix):
            t = t[: -len(suffix)].strip(_STRIP)
            break
    first, rest = _first_line(t)
    key = norm(t) if len(t) <= MAX_LABEL_CHARS else ""
    if key in tab.exact:
        kind, placeholder = tab.exact[key]
        return kind, "", (first if kind == MEDIA else None), placeholder
    if not has_author:
        found = tab.template(key) if key else None
        return SYSTEM, t, None, (found[1] if found else None)
    if len(first) <= 80 and _VIEW_ONCE.search(first) and (lrm or first.startswith("<") or _MEDIA_WORDS.search(first)
                                                          or "message" in first.casefold()):
        return VIEW_ONCE, "", None, "view_once"
    if first.startswith(_POLL) and (first in _POLL or _OPTION.search(rest)):
        return POLL, "", None, "poll"
    if _LOCATION.match(first):  # a venue's name may follow on the next lines: not speech either
        return MEDIA, "", first, "location"
    placeholder = _media_line(first, lrm)
    if placeholder:
        if rest:  # "IMG-1.jpg (file attached)" then the caption: the caption is theirs
            return TEXT, rest, first, None
        return MEDIA, "", first, placeholder
    if lrm:  # an iOS label that no rule above knows
        return SYSTEM, t, None, "other"
    return TEXT, t, None, None


def _media_line(first: str, lrm: bool) -> str | None:
    """The placeholder kind of a first line that names an attachment, or None."""
    if first.casefold() == "null":  # Android writes "null" for content it cannot export
        return "media"
    if _ANGLE.match(first) and len(first) <= MAX_LABEL_CHARS:  # <Media omitted>, <attached: x.jpg>
        return "attachment" if ":" in first else "media"
    m = _IOS_FILE.match(first)
    if m:
        label = tab_label(first.rsplit("\u200e", 1)[1])
        return label or "document"
    if _FILE_ATTACHED.match(first):
        return "attachment"
    # iOS: "‎image omitted", "‎GIF weggelassen"... in a language the table lacks
    if len(first) <= 60 and _MEDIA_WORDS.search(first) and (lrm or len(first.split()) <= 3):
        return "media"
    return None


def tab_label(label: str) -> str | None:
    found = table().exact.get(norm(label))
    return found[1] if found else None
