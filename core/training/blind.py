"""The blind "Which sounds like them?" comparison of a finished run.

For a held-out message the user sees two replies in random order, one written by the base
model + persona card and one by the adapter (the voice measure's rows, same seed), and
picks the one that sounds like the person, or neither. After `BLIND_N` pairs (or all of
them on a run with fewer) it says how often the adapter was picked.

Which side holds the adapter is drawn from a generator seeded by the run and the pair,
so a pair keeps its order across page refreshes and restarts without storing it, and the
page only ever sends "a", "b" or "neither": the mapping to base/adapter happens here.
The picks are stored with the run (storage/voice_picks.py).
"""

from __future__ import annotations

import random
from collections import Counter

BLIND_N = 10  # pairs judged before the result is shown: enough to see a clear preference
SIDES = ("a", "b", "neither")


def blind_pairs(evaluation: dict) -> list[dict]:
    """The run's (prompt, base, adapter) rows that can be compared: the voice measure's
    replies, or the samples when it was not run; rows whose two replies are the same text
    or empty tell nothing and are left out."""
    rows = ((evaluation or {}).get("voice") or {}).get("replies") or (evaluation or {}).get("samples") or []
    return [r for r in rows if (r.get("base") or "").strip() and (r.get("adapter") or "").strip()
            and r["base"].strip() != r["adapter"].strip()]


def adapter_first(run_id: str, pair: int) -> bool:
    """Whether the adapter's reply is shown as "a" for this pair (a fair, stable coin)."""
    return random.Random(f"{run_id}:{pair}").random() < 0.5


def pick_for(run_id: str, pair: int, side: str) -> str:
    """The stored pick ("base", "adapter" or "neither") for the side the user chose."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}")
    if side == "neither":
        return "neither"
    return "adapter" if (side == "a") == adapter_first(run_id, pair) else "base"


def blind_state(run_id: str, evaluation: dict, picks: dict[int, str]) -> dict:
    """Where the comparison stands: the pair to judge next (texts only, in the shown
    order), how many are done, and once all are, how often the adapter was picked."""
    pairs = blind_pairs(evaluation)[:BLIND_N]
    total = len(pairs)
    done = {i: p for i, p in picks.items() if 0 <= i < total}
    nxt = next((i for i in range(total) if i not in done), None)
    current = None
    if nxt is not None:
        row = pairs[nxt]
        a, b = (row["adapter"], row["base"]) if adapter_first(run_id, nxt) else (row["base"], row["adapter"])
        current = {"pair": nxt, "prompt": row.get("prompt") or "", "a": a, "b": b}
    counts = Counter(done.values())
    finished = total > 0 and nxt is None
    summary = None
    if finished:
        summary = (f"You picked the adapter's reply in {counts['adapter']} of {total} pairs, the base model's in "
                   f"{counts['base']}, neither in {counts['neither']}. By chance alone the adapter would get about "
                   f"half of the pairs where you chose one.")
    return {"total": total, "done": len(done), "current": current, "finished": finished, "summary": summary,
            "adapter": counts["adapter"], "base": counts["base"], "neither": counts["neither"]}
