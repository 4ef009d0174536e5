"""The training process's memory: what glibc keeps, and the peak it reached.

Linux only (glibc's malloc and /proc); elsewhere each function does nothing or falls back.
"""

from __future__ import annotations

import resource
from pathlib import Path

# glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB on
# 64-bit), after which activations and gradients come from the heap and stay in the process
# once freed. Fixed at 4 MB, the tensors that make a micro-batch's peak (MLP activations,
# fp32 norms, the loss chunks) get their own mapping, returned when freed; smaller ones
# stay on the heap, where a 256 KB threshold made the kernel zero pages for every small
# tensor (121 against 206 trained tokens/s, bench/train_bench.py on SmolLM2-135M).
MMAP_THRESHOLD = 4 << 20


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def return_large_frees_at_once(threshold: int = MMAP_THRESHOLD) -> None:
    """Serve allocations of `threshold` bytes and more with their own mmap, so that freeing
    them returns the memory at once (glibc's M_MMAP_THRESHOLD). Call before torch allocates
    much: it does not move what the heap already holds."""
    try:
        M_MMAP_THRESHOLD = -3
        _libc().mallopt(M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError):
        pass


def release_freed_memory() -> None:
    """Hand memory that torch freed back to the system (glibc's malloc_trim).

    Micro-batches of varying widths free and allocate differently sized activations every
    step; glibc keeps the freed pieces in its arenas, so the worker's RSS crept up by about
    100 MB per evaluation (2.3 -> 3.9 GB over a 48-step run of SmolLM2-135M). Trimming after
    each step costs a few milliseconds."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> None:
    """Start this process's peak RSS (VmHWM) from its current RSS.

    A child's peak starts from its parent's (the serving app, which holds a model, spawns
    the worker), and `ru_maxrss` keeps it across exec: 1.6 GB "peak" before the worker had
    loaded anything. Writing 5 to clear_refs resets VmHWM."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (VmHWM; ru_maxrss where /proc is not there)."""
    try:
        with open("/proc/self/status") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)
