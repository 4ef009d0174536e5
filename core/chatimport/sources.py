"""Where export bytes come from: a file, a folder, or a member of a zip; and how they become text.

A `Source` can be opened any number of times (large exports are read more than once
instead of being held in memory). Every zip is vetted by `core.safezip.open_zip`; big
members are streamed with a hard byte bound rather than read whole. Text decoding
follows the BOM, recognises UTF-16 without one, and otherwise reads UTF-8 when the whole
file is UTF-8. A file that is not, and holds no UTF-8 multibyte character at all (a chat
a Windows editor re-saved), is read as Windows-1252 with a note; a UTF-8 file with a few
bad bytes is refused rather than garbled.
"""

from __future__ import annotations

import codecs
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from core.errors import ExportInvalid, UnsafeArchive
from core.safezip import open_zip, read_member

from .model import MAX_ITEM_CHARS

SMALL_MEMBER = 32 * 1024**2  # zip members below this are read whole with read_member
MAX_MEMBER = 2 * 1024**3  # no single chat file is bigger; beyond this the zip lies or is hostile
MAX_FOLDER_FILES = 5000  # a Messenger/Instagram download has a few hundred chat files at most
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class ProgressTracker:
    """Adds up bytes read across sources and calls `progress(done, total)` now and then."""

    def __init__(self, callback: Progress | None, total: int):
        self.callback = callback
        self.total = max(total, 0)
        self.done = 0
        self._last = -1

    def add(self, n: int) -> None:
        if self.callback is None:
            return
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        # At most ~200 calls per import: a UI needs no more, and callbacks can be slow.
        step = max(self.total // 200, 1)
        if self.done - self._last >= step or self.done == self.total:
            self._last = self.done
            self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None and self._last != self.total:
            self.done = self.total
            self.callback(self.total, self.total)


class _CountingReader(io.RawIOBase):
    """A binary stream that reports bytes read to a tracker and stops past a byte bound."""

    def __init__(self, raw: IO[bytes], tracker: ProgressTracker | None, limit: int | None, label: str):
        self._raw = raw
        self._tracker = tracker
        self._limit = limit
        self._read = 0
        self._label = label

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self._read += n
        if self._limit is not None and self._read > self._limit:
            raise UnsafeArchive(f"The entry {self._label!r} is larger than its zip declares; it was not read.")
        if self._tracker is not None and n:
            self._tracker.add(n)
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


@dataclass
class Source:
    """One file of an export. `name` is its path inside the export (for detection and messages)."""

    name: str
    size: int
    _opener: Callable[[], IO[bytes]]
    _limit: int | None = None
    _encoding: str | None = None  # decided once by `source_encoding`, reused by every re-read

    def open(self, tracker: ProgressTracker | None = None) -> IO[bytes]:
        raw = self._opener()
        return io.BufferedReader(_CountingReader(raw, tracker, self._limit, self.name), buffer_size=_CHUNK)

    def head(self, n: int = 65536) -> bytes:
        with self.open() as fh:
            return fh.read(n)

    @property
    def basename(self) -> str:
        return self.name.replace("\\", "/").rsplit("/", 1)[-1]


def _junk(name: str) -> bool:
    """Entries that are never a chat: macOS resource forks and hidden files."""
    parts = name.replace("\\", "/").split("/")
    return any(p == "__MACOSX" or p.startswith(".") for p in parts if p)


def file_source(path: Path, name: str | None = None) -> Source:
    return Source(name or path.name, path.stat().st_size, lambda: open(path, "rb"))


def _zip_member_source(zip_path: Path, info: zipfile.ZipInfo) -> Source:
    def opener() -> IO[bytes]:
        zf = open_zip(zip_path, what="export zip")
        if info.file_size <= SMALL_MEMBER:
            try:
                return io.BytesIO(read_member(zf, info.filename, SMALL_MEMBER))
            finally:
                zf.close()
        # Big chat files are streamed; the zip stays open until the stream is closed.
        fh = zf.open(info.filename)
        close = fh.close

        def closing() -> None:
            close()
            zf.close()

        fh.close = closing  # type: ignore[method-assign]
        return fh

    # Bound reads by what the entry declares (plus slack), since declared sizes can lie.
    limit = min(info.file_size + _CHUNK, MAX_MEMBER)
    return Source(info.filename, info.file_size, opener, limit)


def is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def list_sources(path: str | os.PathLike) -> list[Source]:
    """The candidate files of an export at `path` (a file, a zip or a folder)."""
    p = Path(path)
    if not p.exists():
        raise ExportInvalid(f"There is no file or folder at {str(path)!r}.")
    if p.is_dir():
        out = []
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p).as_posix()
            if f.is_file() and not f.is_symlink() and not _junk(rel):
                out.append(file_source(f, rel))
                if len(out) > MAX_FOLDER_FILES:
                    raise ExportInvalid(
                        f"The folder {p.name!r} holds more than {MAX_FOLDER_FILES:,} files; "
                        "point Chorus at the chat export itself."
                    )
        if not out:
            raise ExportInvalid(f"The folder {p.name!r} is empty.")
        return out
    if p.stat().st_size == 0:
        raise ExportInvalid(f"The file {p.name!r} is empty (0 bytes).")
    if is_zip(p):
        zf = open_zip(p, what="export zip")
        try:
            infos = [i for i in zf.infolist() if not i.is_dir() and not _junk(i.filename)]
        finally:
            zf.close()
        if not infos:
            raise ExportInvalid(f"The zip {p.name!r} holds no files.")
        return [_zip_member_source(p, i) for i in infos]
    return [file_source(p)]


# ---- text decoding -------------------------------------------------------------------------

def sniff_encoding(head: bytes) -> str:
    """Pick a codec from the first bytes: BOM first, then UTF-16's zero bytes, else UTF-8."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith(codecs.BOM_UTF16_LE) or head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    sample = head[:4096]
    if len(sample) >= 4:
        even_zeros = sample[0::2].count(0)
        odd_zeros = sample[1::2].count(0)
        half = len(sample) // 2
        # Mostly-ASCII UTF-16 has a zero in every other byte.
        if odd_zeros > half * 0.3 and even_zeros < half * 0.05:
            return "utf-16-le"
        if even_zeros > half * 0.3 and odd_zeros < half * 0.05:
            return "utf-16-be"
    return "utf-8"


def looks_binary(head: bytes, encoding: str) -> bool:
    if encoding.startswith("utf-16"):
        return False
    return b"\x00" in head[:8192]


FALLBACK = "cp1252"
FALLBACK_NOTE = "read as Windows-1252; if names look wrong, export the chat again."


def _utf8_verdict(source: Source) -> str:
    """'utf-8' if the whole file decodes; FALLBACK if it does not and holds no valid UTF-8
    multibyte character (so it was never UTF-8); else raise: a damaged UTF-8 file is
    refused rather than read as Windows-1252, which would garble its valid characters."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    bad = good_multibyte = False
    with source.open() as fh:
        while chunk := fh.read(_CHUNK):
            if chunk.isascii() and not dec.getstate()[0]:
                continue
            text = dec.decode(chunk)
            bad = bad or "\ufffd" in text
            good_multibyte = good_multibyte or any(ord(ch) > 0x7F and ch != "\ufffd" for ch in text)
            if bad and good_multibyte:
                break
        bad = bad or "\ufffd" in dec.decode(b"", final=True)
    if not bad:
        return "utf-8"
    if good_multibyte:
        strict = codecs.getincrementaldecoder("utf-8")(errors="strict")
        try:
            with source.open() as fh:
                while chunk := fh.read(_CHUNK):
                    strict.decode(chunk)
                strict.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise not_utf8(source.basename, exc) from None
        raise not_utf8(source.basename, None)
    try:  # bytes that Windows-1252 leaves undefined (0x81, 0x8d...) mean Latin-1
        with source.open() as fh:
            while chunk := fh.read(_CHUNK):
                chunk.decode(FALLBACK)
        return FALLBACK
    except UnicodeDecodeError:
        return "latin-1"


def source_encoding(source: Source) -> str:
    """The codec of a text source, decided once: BOM, UTF-16 shape, then UTF-8 or the fallback."""
    if source._encoding is None:
        head = source.head(4096)
        enc = sniff_encoding(head)
        if enc == "utf-8" and not looks_binary(head, enc):
            enc = _utf8_verdict(source)
        source._encoding = enc
    return source._encoding


def encoding_note(source: Source) -> str | None:
    """The note for a file that was not read as Unicode, or None."""
    if source._encoding in (FALLBACK, "latin-1"):
        name = "Windows-1252" if source._encoding == FALLBACK else "Latin-1"
        return f"{source.basename}: {FALLBACK_NOTE.replace('Windows-1252', name)}"
    return None


def decode_head(source: Source, n: int = 65536) -> tuple[str, str]:
    """(encoding, first characters) for detection; a cut multibyte character at the end is dropped."""
    head = source.head(n)
    enc = sniff_encoding(head)
    if looks_binary(head, enc):
        return enc, ""
    enc = source_encoding(source)
    dec = codecs.getincrementaldecoder(enc)(errors="strict")
    try:
        text = dec.decode(head, final=len(head) < n)
    except UnicodeDecodeError as exc:
        raise not_utf8(source.basename, exc) from None
    return enc, text


def not_utf8(name: str, exc: UnicodeDecodeError | None) -> ExportInvalid:
    where = f" (byte 0x{exc.object[exc.start]:02x} cannot be decoded)" if exc is not None else ""
    return ExportInvalid(
        f"{name!r} is not UTF-8 text{where}, though parts of it are: the file is damaged. "
        "Export the chat again, or re-save the file as UTF-8."
    )


def open_text(source: Source, tracker: ProgressTracker | None = None, newline: str | None = None) -> IO[str]:
    """A text stream over the source with its encoding (strict: bad bytes raise)."""
    enc = source_encoding(source)
    raw = source.open(tracker)
    return io.TextIOWrapper(raw, encoding=enc, errors="strict", newline=newline)


def bounded_lines(fh: IO[str], name: str) -> Iterator[str]:
    """The lines of a text stream with their endings, refusing one longer than `MAX_ITEM_CHARS`
    (`for line in fh` would read a line of any length into memory)."""
    n = 0
    while line := fh.readline(MAX_ITEM_CHARS + 1):
        n += 1
        if len(line) > MAX_ITEM_CHARS:
            raise ExportInvalid(
                f"{name!r} line {n:,} is longer than {MAX_ITEM_CHARS:,} characters; no chat message is that "
                "long. The file is damaged or not a chat export: export the chat again."
            )
        yield line


def iter_lines(source: Source, tracker: ProgressTracker | None = None) -> Iterator[str]:
    """Lines without their ending; CRLF, LF and lone CR all end a line."""
    with open_text(source, tracker) as fh:
        try:
            for line in bounded_lines(fh, source.basename):
                yield line.rstrip("\n")
        except UnicodeDecodeError as exc:
            raise not_utf8(source.basename, exc) from None
