"""Reading an adapter's weights straight into the slot tensors that serve it.

A safetensors file is an 8-byte header length, a JSON header (each tensor's dtype, shape and
byte range) and the raw little-endian data. The first load of a file goes through the full
check (core/adapters.py `check_compatible`, which reads every tensor); the engine remembers
what it accepted. A later load of the same file (evicted, then wanted again: same sha256,
config and metadata) only reads the header, checks that it lists exactly the tensors that
were accepted, and reads the bytes with `preadv` into the slot's own parameters: no
intermediate tensors and one pass over the data, about a third of `load_file` + `copy_`.

What is verified when: the sha256 of the whole file is computed at its first load and again
whenever its (size, mtime, ctime, inode) change (core/adapters.py `DigestCache`); a direct
read does not hash the bytes again (19.6 MB of SHA-256 costs several times the read: see
docs/performance.md). Any write to the file, in place or not, moves its ctime, which
`utime` cannot set back, so an edited file is hashed and fully checked again before it is
served; only the same bytes the full check accepted take this path.

Plain reads, not mmap: a file truncated while it is read raises `AdapterCorrupt` instead of
killing the process with SIGBUS.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from core.errors import AdapterCorrupt

MAX_HEADER = 16 * 1024 * 1024
_IOV_MAX = 512  # buffers per preadv call (Linux allows 1024)


def _torch_dtypes() -> dict:
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class WeightsFile:
    """The header of a safetensors file: per tensor (dtype, shape, start, end) in bytes from
    the start of the file. Iterating it gives the tensor names, like the dict `load_file`
    returns, so the pool can take either."""

    def __init__(self, path: Path, entries: dict):
        self.path = Path(path)
        self.entries = entries

    @classmethod
    def read_header(cls, path: Path) -> "WeightsFile":
        path = Path(path)
        dtypes = _torch_dtypes()
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = f.read(8)
                if len(raw) != 8:
                    raise ValueError("no header")
                (n,) = struct.unpack("<Q", raw)
                if n > min(MAX_HEADER, size - 8):
                    raise ValueError("header length out of range")
                header = json.loads(f.read(n))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise AdapterCorrupt(f"The adapter's weights file cannot be read (truncated or damaged?): {exc}.") from None
        if not isinstance(header, dict):
            raise AdapterCorrupt("The adapter's weights file has a malformed header.")
        header.pop("__metadata__", None)
        start = 8 + n
        entries = {}
        for name, info in header.items():
            try:
                dtype = dtypes[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise AdapterCorrupt(f"The adapter's weights file describes '{name}' in a way Chorus cannot read.") from None
            numel = 1
            for d in shape:
                numel *= d
            if begin < 0 or end - begin != numel * dtype.itemsize or start + end > size:
                raise AdapterCorrupt(f"The adapter's weights file is truncated or damaged ('{name}' lies outside it).")
            entries[name] = (dtype, shape, start + begin, start + end)
        return cls(path, entries)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self):
        return self.entries.keys()

    def shape(self, name: str) -> tuple:
        return self.entries[name][1]

    def layout_digest(self) -> str:
        """Digest of name -> (dtype, shape): what a check of the tensors saw (see layout_of)."""
        return _digest({name: (e[0], e[1]) for name, e in self.entries.items()})

    def read_into(self, targets: dict, views: dict | None = None) -> None:
        """Fill targets[name] (CPU tensors of the tensor's shape) from the file. `views`
        may hold ready byte views (`byte_view`) of the targets, kept by a caller that
        fills the same tensors again and again."""
        import torch

        direct, converted = [], []
        for name, target in targets.items():
            dtype, shape, begin, end = self.entries[name]
            if tuple(target.shape) != shape:
                raise AdapterCorrupt(f"The adapter tensor '{name}' does not fit its module.")
            if target.dtype == dtype and target.is_contiguous():
                direct.append((begin, end, target, name))
            else:
                converted.append((begin, end, dtype, target))
        direct.sort(key=lambda t: t[0])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            with torch.no_grad():
                i = 0
                while i < len(direct):
                    # A run of tensors that lie back to back in the file: one preadv.
                    j = i + 1
                    while j < len(direct) and j - i < _IOV_MAX and direct[j][0] == direct[j - 1][1]:
                        j += 1
                    buffers = [views[n] if views and n in views else byte_view(t) for _, _, t, n in direct[i:j]]
                    want = direct[j - 1][1] - direct[i][0]
                    if os.preadv(fd, buffers, direct[i][0]) != want:
                        raise AdapterCorrupt("The adapter's weights file is truncated (it changed while it was read).")
                    i = j
                for begin, end, dtype, target in converted:
                    tmp = torch.empty(target.shape, dtype=dtype)
                    if os.preadv(fd, [byte_view(tmp)], begin) != end - begin:
                        raise AdapterCorrupt("The adapter's weights file is truncated (it changed while it was read).")
                    target.copy_(tmp)
        except OSError as exc:
            raise AdapterCorrupt(f"The adapter's weights file cannot be read: {exc}.") from None
        finally:
            os.close(fd)


def byte_view(tensor):
    """A writable byte view of a contiguous CPU tensor's memory."""
    import torch

    return tensor.detach().view(torch.uint8).reshape(-1).numpy()


def layout_of(tensors: dict) -> str:
    """A digest of name -> (dtype, shape) of loaded tensors, comparable with
    WeightsFile.layout_digest() (kept per accepted file, so small)."""
    return _digest({name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()})


def _digest(layout: dict) -> str:
    import hashlib

    return hashlib.sha256(repr(sorted((k, str(d), s) for k, (d, s) in layout.items())).encode()).hexdigest()


def checked_key(spec) -> str:
    """What decides the outcome of the full check besides the engine: the weights' sha256
    and the adapter's config and metadata (digested, as it is kept per accepted file)."""
    import hashlib

    blob = json.dumps([spec.sha256, spec.config, spec.meta], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
