"""The blind comparison's answers: for a finished training run, which reply of each pair
the user picked as sounding like the person (`base`, `adapter` or `neither`).

Rows are keyed by (run, pair index) and go with their run (ON DELETE CASCADE); the pairs themselves live in the run's evaluation
JSON (core/training/voice.py's replies), so this table only says what was chosen.
"""

from __future__ import annotations

from storage.db import DatabaseHandle, now

PICKS = ("base", "adapter", "neither")


class VoicePicks:
    def __init__(self, handle: DatabaseHandle):
        self._h = handle

    def record(self, run_id: str, pair: int, pick: str) -> None:
        """Store (or replace) the pick for one pair of `run_id`."""
        if pick not in PICKS:
            raise ValueError(f"unknown pick {pick!r}")
        with self._h.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO voice_picks (run_id, pair, pick, created) VALUES (?, ?, ?, ?)",
                [run_id, int(pair), pick, now()],
            )

    def of_run(self, run_id: str) -> dict[int, str]:
        """{pair index: pick} of `run_id`."""
        rows = self._h.db.execute("SELECT pair, pick FROM voice_picks WHERE run_id = ? ORDER BY pair", [run_id]).fetchall()
        return {int(pair): pick for pair, pick in rows}
