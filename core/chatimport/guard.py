"""The repetition guard: an app label that no rule and no table entry knows, caught by its shape.

A label the structural rules and `whatsapp_labels.json` miss (a language the table lacks,
a wording WhatsApp changed) still betrays itself over a whole chat: the very same body,
spelled exactly the same, sent many times by more than one person, shaped like a label
(a few words, no digits, emoji, links or '?!'). People repeat themselves too ("Good
night"), but they vary case and punctuation; a label never does. What the guard sets
aside is named in the import's notes, and `keep` (`inspect --keep BODY`, `load_export(...,
keep=[...])`) keeps such a body as text.

The guard counts while the file is read once, so it holds at most `MAX_TRACKED` distinct
short bodies; beyond that, the ones seen once are forgotten (a label is seen many times).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from .model import LABEL, TEXT, Message
from .placeholders import norm

MIN_REPEATS = 5  # a real export repeats a label dozens of times; a few is already unlike speech
MIN_SPEAKERS = 2  # one person's catchphrase is their voice; a label comes from everyone
MAX_TRACKED = 100_000
_NOT_LABEL = re.compile(r"[\d?!¿¡@#*_~/\\]|://")
# Scripts written without spaces: one "word" there can be a whole label.
_UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_PUNCT = re.compile(r"[\s.,;:'\"()\[\]<>«»“”‘’。、\u00a0\u202f]+")


def label_shape(text: str) -> bool:
    """Could this body be an app's label rather than speech?"""
    if not 2 <= len(text) <= 80 or "\n" in text or _NOT_LABEL.search(text):
        return False
    if any(unicodedata.category(ch) in ("So", "Sk", "Cs") for ch in text):  # emoji and symbols are people's
        return False
    letters = [ch for ch in text if ch.isalpha()]
    if len(set(letters)) < 3:  # "hahaha", "kkkk", "哈哈哈"
        return False
    words = [w for w in text.split() if any(ch.isalpha() for ch in w)]
    return len(words) >= 2 or (len(letters) >= 4 and bool(_UNSPACED.search(text)))


def _key(text: str) -> str:
    return _PUNCT.sub(" ", norm(text)).strip()


class RepetitionGuard:
    """Watches the text messages of one import, then says which bodies look like labels."""

    def __init__(self, keep: Iterable[str] = (), min_repeats: int = MIN_REPEATS, min_speakers: int = MIN_SPEAKERS):
        self.keep = {_key(k) for k in keep if k and k.strip()}
        self.min_repeats = min_repeats
        self.min_speakers = min_speakers
        self._seen: dict[str, list] = {}  # key -> [count, speakers, exact spellings]
        self.aside: dict[str, tuple[int, int]] = {}  # exact body -> (times, speakers)
        self.kept: dict[str, int] = {}  # bodies that would have been set aside but `keep` names

    def see(self, msg: Message) -> None:
        if msg.kind != TEXT or not label_shape(msg.text):
            return
        key = _key(msg.text)
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= MAX_TRACKED:
                self._seen = {k: v for k, v in self._seen.items() if v[0] > 1}
            entry = self._seen[key] = [0, set(), set()]
        entry[0] += 1
        if len(entry[1]) < 50:  # enough to name how many; bounded for huge group chats
            entry[1].add(msg.speaker)
        if len(entry[2]) < 2:
            entry[2].add(msg.text)

    def decide(self) -> dict[str, tuple[int, int]]:
        """The bodies to set aside: repeated, by several speakers, always spelled the same."""
        for key, (count, speakers, spellings) in self._seen.items():
            if count >= self.min_repeats and len(speakers) >= self.min_speakers and len(spellings) == 1:
                body = next(iter(spellings))
                if key in self.keep:
                    self.kept[body] = count
                else:
                    self.aside[body] = (count, len(speakers))
        self._seen = {}
        return self.aside

    def apply(self, msg: Message) -> Message:
        """Set a message aside if its body is one of the decided labels (in place)."""
        if msg.kind == TEXT and msg.text in self.aside:
            msg.kind, msg.media, msg.text, msg.placeholder = LABEL, msg.text, "", "repeated"
        return msg

    def notes(self) -> list[str]:
        out = []
        for body, (count, speakers) in sorted(self.aside.items(), key=lambda kv: -kv[1][0]):
            out.append(f"{body!r} appears {count:,} times from {speakers} speakers; treated as a placeholder. "
                       f"If it is really someone's words, keep it (inspect --keep {body!r}).")
        for body, count in self.kept.items():
            out.append(f"{body!r} appears {count:,} times like an app's label; kept as text, as asked.")
        return out
