"""Timing alternatives against each other at engine start (the fast paths that choose
themselves: core/engine/cpu_4bit.py, compute_dtype.py, attention.py)."""

from __future__ import annotations

import time


def interleaved_ms(ways: dict, trials: int, reps: int = 1) -> dict:
    """Median ms of one call of each of `ways` (name -> callable), after a warm-up call of
    each. The ways take turns within every trial, so that a slow spell of a busy machine
    lands on all of them; `reps` calls make one sample, for calls too short to time alone."""
    for way in ways.values():
        way()
    times = {name: [] for name in ways}
    for _ in range(trials):
        for name, way in ways.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                way()
            times[name].append((time.perf_counter() - t0) * 1000 / reps)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
