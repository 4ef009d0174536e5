"""Opening zips that came from outside (chat exports, character bundles, adapter uploads).

A zip is checked before anything is read from it: no absolute paths, no `..`, no links,
a bounded number of entries, a bounded total size and a bounded compression ratio.
Reads are bounded again while streaming, because the sizes a zip declares can lie.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from core.errors import UnsafeArchive

MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3  # 2 GiB unpacked: far above any real export or bundle
MAX_RATIO = 200  # text compresses ~10x; bombs compress 1000x and more
_CHUNK = 1 << 20


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _unsafe_name(name: str) -> bool:
    if not name or "\x00" in name:
        return True
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    return any(part == ".." for part in PurePosixPath(norm).parts)


def open_zip(
    source: str | Path | IO[bytes],
    *,
    what: str = "archive",
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: int = MAX_RATIO,
    max_entries: int = MAX_ENTRIES,
) -> zipfile.ZipFile:
    """Open and vet a zip; raise `UnsafeArchive` with a plain reason if it is hostile."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnsafeArchive(f"The {what} is not a readable zip file ({exc}). Export it again and retry.") from None
    infos = zf.infolist()
    if len(infos) > max_entries:
        zf.close()
        raise UnsafeArchive(f"The {what} holds {len(infos):,} entries, more than the {max_entries:,} allowed.")
    total = 0
    seen: set[str] = set()
    for info in infos:
        key = info.filename.replace("\\", "/")
        if key in seen:
            zf.close()
            raise UnsafeArchive(f"The {what} holds the entry {info.filename!r} twice; readers may disagree on it, so it was not opened.")
        seen.add(key)
        if _unsafe_name(info.filename):
            zf.close()
            raise UnsafeArchive(
                f"The {what} contains an entry with an unsafe path ({info.filename!r}); it was not opened."
            )
        if _is_link(info):
            zf.close()
            raise UnsafeArchive(f"The {what} contains a symbolic link ({info.filename!r}); it was not opened.")
        total += info.file_size
        if info.file_size > 1024 * 1024 and info.file_size > max_ratio * max(info.compress_size, 1):
            zf.close()
            raise UnsafeArchive(
                f"The {what} entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}x "
                "(a zip bomb?); it was not opened."
            )
    if total > max_total_bytes:
        zf.close()
        raise UnsafeArchive(
            f"The {what} would unpack to {total / 1024**2:,.0f} MB, more than the "
            f"{max_total_bytes / 1024**2:,.0f} MB allowed."
        )
    return zf


def read_member(zf: zipfile.ZipFile, name: str | zipfile.ZipInfo, max_bytes: int) -> bytes:
    """Read one entry, refusing to go past `max_bytes` whatever the zip declares."""
    label = name if isinstance(name, str) else name.filename
    out = bytearray()
    try:
        with zf.open(name) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                out += chunk
                if len(out) > max_bytes:
                    raise UnsafeArchive(f"The entry {label!r} is larger than {_size(max_bytes)}; it was not read.")
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, OSError) as exc:
        raise UnsafeArchive(f"The entry {label!r} cannot be read (damaged, encrypted or unsupported: {exc}).") from None
    return bytes(out)


def _size(n: int) -> str:
    return f"{n / 1024**2:,.0f} MB" if n >= 1024**2 else f"{n / 1024:,.0f} KB"


def extract_all(zf: zipfile.ZipFile, dest: Path, max_total_bytes: int = MAX_TOTAL_BYTES) -> list[Path]:
    """Extract every file entry under `dest` (already vetted by `open_zip`), bounded in total size."""
    dest = Path(dest).resolve()
    written: list[Path] = []
    budget = max_total_bytes
    for info in zf.infolist():
        if info.is_dir():
            continue
        target = (dest / info.filename.replace("\\", "/")).resolve()
        if dest not in target.parents:
            raise UnsafeArchive(f"The entry {info.filename!r} would be written outside its folder; it was not.")
        data = read_member(zf, info, budget)
        budget -= len(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written
