"""Signal chats as written by signal-export (`sigexport`) in its Markdown/text form.

Lines look like WhatsApp's iOS ones (`[2024-01-02 12:34:56] Name: text`, older
`[2019-12-24, 12:23] Name: text`), so the WhatsApp line reader does the splitting and
this module only knows what signal-export puts inside a body: quoted replies as `> ...`
lines, reactions as `(- Name: 👍 -)`, stickers as `(( label ))`, attachments as Markdown
links or images, and `(This message was deleted)`.
"""

from __future__ import annotations

import re

from .model import DELETED, MEDIA, SYSTEM, TEXT

_ATTACHMENT = re.compile(r"!?\[([^\]\n]*)\]\(([^)\n]*)\)")
_REACTIONS = re.compile(r"^\(- .* -\)$", re.M)
_STICKER = re.compile(r"^\(\( (.*) \)\)$", re.M)


def classify_signal(text: str) -> tuple[str, str, str | None]:
    """(kind, text, media) of one signal-export message body."""
    t = text.strip()
    if t.casefold().strip("() .") == "this message was deleted":
        return DELETED, "", None
    t = _REACTIONS.sub("", t)  # reactions belong to the message, they are nobody's words
    media = [m.group(1) or m.group(2) for m in _ATTACHMENT.finditer(t)]
    media += [f"sticker {m.group(1)}" for m in _STICKER.finditer(t)]
    t = _STICKER.sub("", _ATTACHMENT.sub("", t))
    # A quoted reply repeats someone else's words: drop the quote, keep the answer.
    t = "\n".join(line for line in t.split("\n") if not line.startswith(">")).strip()
    media_desc = ", ".join(media) if media else None
    if not t:
        return (MEDIA, "", media_desc) if media else (SYSTEM, "", None)
    return TEXT, t, media_desc
