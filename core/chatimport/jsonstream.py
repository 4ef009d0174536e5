"""Reading big JSON exports as a stream, one array item at a time.

Telegram's result.json or a DiscordChatExporter file can be hundreds of MB; `json.load`
would hold the text and a tree several times its size. Here the caller names the arrays
it wants item by item (path patterns like ("chats", "list", "*", "messages", "*")); the
walker steps through the containers on the way to them by hand and hands every item to
the C decoder (`raw_decode`) on a sliding buffer, so memory is bounded by the largest item,
and an item is refused beyond `MAX_ITEM_CHARS`.
"""

from __future__ import annotations

import json
from typing import IO, Iterator

from core.errors import ExportInvalid

from .model import MAX_ITEM_CHARS

_WS = " \t\n\r"
_CHUNK = 1 << 20


class JsonWalker:
    """Walks a JSON text stream; see `walk` for the events it yields."""

    def __init__(self, fh: IO[str], name: str, patterns: list[tuple[str, ...]]):
        self._fh = fh
        self._name = name
        self._patterns = patterns
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._consumed = 0  # characters dropped from the front of the buffer
        self._dec = json.JSONDecoder()

    # -- buffer ----------------------------------------------------------------------------
    def _fill(self, want: int = _CHUNK) -> bool:
        if self._eof:
            return False
        if self._pos > _CHUNK:
            self._consumed += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        data = self._fh.read(max(want, _CHUNK))
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _peek(self) -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WS:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _error(self, what: str, at: int | None = None) -> ExportInvalid:
        at = self._pos if at is None else at
        where = self._consumed + at
        if self._eof and at >= len(self._buf.rstrip()) - 1:
            return ExportInvalid(
                f"{self._name!r} ends in the middle of its JSON ({what}); the file looks truncated. "
                "Export it again and make sure the download finished."
            )
        return ExportInvalid(f"{self._name!r} is not valid JSON near character {where:,} ({what}).")

    def _expect(self, ch: str) -> None:
        c = self._peek()
        if c != ch:
            raise self._error(f"expected {ch!r}, found {c!r}" if c else f"expected {ch!r}")
        self._pos += 1

    def _decode(self):
        """Decode one whole value at the cursor, reading more text until it is complete."""
        self._peek()
        while True:
            try:
                value, end = self._dec.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                pending = len(self._buf) - self._pos
                if pending > MAX_ITEM_CHARS:
                    raise ExportInvalid(
                        f"{self._name!r} holds one message or value longer than {MAX_ITEM_CHARS:,} characters "
                        f"(from character {self._consumed + self._pos:,}); no chat message is that long. "
                        "The file is damaged or not a chat export: export the chat again."
                    ) from None
                # Grow geometrically so a huge value is not re-parsed once per chunk, but not far past the bound.
                if self._fill(min(pending, MAX_ITEM_CHARS + 1 - pending)):
                    continue
                at = len(self._buf) if exc.msg.startswith("Unterminated") else exc.pos
                raise self._error(exc.msg, at) from None
            except RecursionError:
                raise ExportInvalid(
                    f"{self._name!r} nests its JSON too deeply (near character {self._consumed + self._pos:,}) "
                    "to be a chat export; the file is damaged or was not written by a chat exporter."
                ) from None
            except ValueError as exc:  # valid JSON that Python will not read, e.g. a 5,000-digit number
                raise self._error(str(exc)) from None
            # A number (or literal) that touches the end of the buffer may continue in the next chunk.
            if end >= len(self._buf) and not self._eof and not isinstance(value, (str, dict, list)):
                if self._fill():
                    continue
            self._pos = end
            return value

    # -- paths -----------------------------------------------------------------------------
    def _is_item(self, path: tuple[str, ...]) -> bool:
        return path in self._patterns

    def _on_the_way(self, path: tuple[str, ...]) -> bool:
        n = len(path)
        return any(len(pat) > n and pat[:n] == path for pat in self._patterns)

    # -- walking ---------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[str, tuple[str, ...], object]]:
        """Yield ("item", path, value) for streamed items, ("value", path, value) for other
        values met on the way (chat names, ids), and ("end", path, None) when a container
        on the way closes. Array positions appear in paths as "*"."""
        c = self._peek()
        if c == "":
            raise ExportInvalid(f"{self._name!r} is empty.")
        yield from self._walk(())
        if self._peek() != "":
            raise self._error("unexpected text after the end of the JSON")

    def _walk(self, path: tuple[str, ...]):
        if self._is_item(path):
            yield "item", path, self._decode()
            return
        c = self._peek()
        if c == "{" and self._on_the_way(path):
            self._pos += 1
            if self._peek() == "}":
                self._pos += 1
            else:
                while True:
                    if self._peek() != '"':
                        raise self._error("expected a key")
                    key = self._decode()
                    self._expect(":")
                    yield from self._walk(path + (key,))
                    c = self._peek()
                    self._pos += 1
                    if c == ",":
                        continue
                    if c == "}":
                        break
                    self._pos -= 1
                    raise self._error(f"expected ',' or '}}', found {c!r}" if c else "unclosed object")
            yield "end", path, None
        elif c == "[" and self._on_the_way(path):
            self._pos += 1
            if self._peek() == "]":
                self._pos += 1
            else:
                while True:
                    yield from self._walk(path + ("*",))
                    c = self._peek()
                    self._pos += 1
                    if c == ",":
                        continue
                    if c == "]":
                        break
                    self._pos -= 1
                    raise self._error(f"expected ',' or ']', found {c!r}" if c else "unclosed list")
            yield "end", path, None
        else:
            yield "value", path, self._decode()
