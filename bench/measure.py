"""Readings the benchmarks take: percentiles, one-token step times, memory, and the page
cache (dropping a file from it, and how much of a file it holds).

Device-aware: on CUDA a step is timed after `torch.cuda.synchronize()` (kernels run
asynchronously, so the clock would otherwise read the launch, not the work), and memory
is what the CUDA allocator holds rather than the process's RSS.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import statistics
import time
from pathlib import Path

from core.device import model_device, on_model


def pct(values, q):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def med(values):
    return statistics.median(values)


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def mem_bytes(device: str, trim: bool = False) -> int:
    """Memory that adapters and models take on `device`: the CUDA allocator's bytes on a
    GPU, else resident memory; with trim, after handing freed heap back to the OS first, so
    that memory freed earlier (and reused by what is measured) does not hide growth."""
    if trim:
        gc.collect()
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated()
    import psutil

    if trim:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    return psutil.Process().memory_info().rss


def step_ms(model, ids, threads, steps: int = 16, **extra) -> float:
    """Median milliseconds of one-token forward steps through the KV cache, without
    generate()'s own per-token work (logits processors, streamer): the model alone.
    `ids` is one prompt or a list of equal-length prompts (a batch); `extra` goes to every
    forward (peft's `adapter_names`)."""
    import torch

    x = on_model(model, ids if isinstance(ids[0], list) else [ids])
    device = model_device(model)
    times = []
    with torch.inference_mode(), threads.active():
        out = model(input_ids=x, use_cache=True, **extra)
        for _ in range(steps):
            nxt = out.logits[:, -1:].argmax(-1)
            sync(device)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True, **extra)
            sync(device)
            times.append((time.perf_counter() - t0) * 1000)
    return med(times)


def drop_from_page_cache(folder: Path) -> None:
    """Evict every file of `folder` from the page cache, so that the next read comes from
    the disk: written-back first (fsync; DONTNEED leaves dirty pages alone), then
    posix_fadvise(POSIX_FADV_DONTNEED)."""
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def cached_fraction(path: Path) -> float | None:
    """Share of `path`'s pages in the page cache (mincore on a mapping that is never
    touched, so asking does not read the file in); None where it cannot be told."""
    size = Path(path).stat().st_size
    if size == 0:
        return 0.0
    try:
        libc = _libc()
    except (OSError, AttributeError):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in bytes(vec)) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
