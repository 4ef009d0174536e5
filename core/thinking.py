"""Keeping a reasoning model's `<think>...</think>` blocks out of a persona's words.

Reasoning models (Qwen3, DeepSeek-R1 and their kin) may write a thinking block before
their answer even with thinking switched off in the template. Such a block is never
shown as the persona's words nor stored as its reply: `ThinkFilter` takes a reply as it
streams, piece by piece, and lets only the words outside blocks through, so a streamed
delta never leaks a block, also when a tag is split across pieces or a block is still
open when the reply ends. What was inside the blocks is kept for the message's metadata.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial_tail(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class ThinkFilter:
    """Splits a streamed reply into the words shown and the thinking kept aside.

    `feed(piece)` returns the text that may be shown now (possibly ""); `finish()` returns
    what was held back at the end. `inside=True` starts inside a block: for templates whose
    generation prompt itself opens one (the model's first words are then thinking).
    """

    def __init__(self, inside: bool = False):
        self.inside = inside
        self.thoughts: list[str] = []
        self.unclosed = False  # the reply ended inside a block
        self._held = ""  # text that may be the start of a tag
        self._current: list[str] = []  # the block being read
        self._after_block = False  # strip the blank lines a block leaves before the answer
        self._finished = False

    @property
    def thinking(self) -> str:
        """Every block's text, blocks separated by a blank line."""
        parts = [t.strip() for t in self.thoughts]
        return "\n\n".join(p for p in parts if p)

    def feed(self, piece: str) -> str:
        text = self._held + piece
        self._held = ""
        shown: list[str] = []
        while text:
            if self.inside:
                at = text.find(CLOSE)
                if at < 0:
                    keep = _partial_tail(text, (CLOSE,))
                    self._current.append(text[: len(text) - keep])
                    self._held = text[len(text) - keep :]
                    break
                self._current.append(text[:at])
                self.thoughts.append("".join(self._current))
                self._current = []
                self.inside, self._after_block = False, True
                text = text[at + len(CLOSE) :]
            else:
                opens, closes = text.find(OPEN), text.find(CLOSE)
                hits = [(at, tag) for at, tag in ((opens, OPEN), (closes, CLOSE)) if at >= 0]
                if not hits:
                    keep = _partial_tail(text, (OPEN, CLOSE))
                    shown.append(text[: len(text) - keep])
                    self._held = text[len(text) - keep :]
                    break
                at, tag = min(hits)
                shown.append(text[:at])
                # A stray closing tag (thinking that began in the prompt) is dropped.
                self.inside = tag == OPEN
                text = text[at + len(tag) :]
        return self._show("".join(shown))

    def finish(self) -> str:
        """The rest: held text that never became a tag is shown; an open block is kept aside.
        A second call returns ""."""
        if self._finished:
            return ""
        self._finished = True
        held, self._held = self._held, ""
        if self.inside:
            self._current.append(held)
            self.thoughts.append("".join(self._current))
            self._current = []
            self.unclosed = True
            return ""
        return self._show(held)

    def _show(self, text: str) -> str:
        if self._after_block:
            text = text.lstrip()
            if text:
                self._after_block = False
        return text


def split_thinking(text: str, inside: bool = False) -> tuple[str, str]:
    """(the reply without its thinking blocks, the thinking) of a finished reply."""
    f = ThinkFilter(inside)
    shown = f.feed(text) + f.finish()
    return shown.strip(), f.thinking


def prompt_opens_thinking(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside a thinking block (its last tag is an open one)."""
    return prompt_text.rfind(OPEN) > prompt_text.rfind(CLOSE)
