"""Training runs and their progress rows.

A run (`training_runs`) records what was asked (export, speaker, config JSON), where it
stands (status, step of total, the worker's pid, an error message for the user) and what
came of it (the adapter row, the evaluation JSON). Progress (`training_progress`) is one
row per logged step or held-out evaluation, written by the training process as it goes
and read by the UI for the progress bar and the loss plot.

Statuses: queued -> running -> finished | failed | cancelled, with `cancelling` while a
cancel waits for the current step to end. failed and cancelled runs can be resumed.

One run at a time: `create` and `requeue` check that no run is active and write in one
BEGIN IMMEDIATE transaction, so two starts at once (threads or processes) cannot both
pass the check. Each records its owner (host, pid, since when): until the worker's pid
is recorded, a queued run is alive while the process that queued it is.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

from storage.db import DatabaseHandle, decode_json, now
from storage.errors import ChorusError, NotFound

STATUSES = ("queued", "running", "cancelling", "cancelled", "failed", "finished")
ACTIVE = ("queued", "running", "cancelling")
_JSON = ("config", "evaluation")


def _decode(row: dict) -> dict:
    return decode_json(row, dict.fromkeys(_JSON, dict))


class RunActive(ChorusError):
    """Another run is active; `.row` is that run."""

    def __init__(self, row: dict):
        super().__init__(f"A training run ({row['id']}, {row['speaker']}) is still going; wait for it or cancel it.")
        self.row = row


def owner() -> dict:
    """This process as the owner of a run it queues."""
    return {"owner_host": socket.gethostname(), "owner_pid": os.getpid(), "owned_since": now()}


class TrainingRuns:
    def __init__(self, handle: DatabaseHandle):
        self._h = handle

    @property
    def _db(self):
        return self._h.db

    def create(self, *, speaker: str, export_name: str, config: dict, persona_id: str | None = None) -> dict:
        """Insert a queued run owned by this process; raises RunActive if a run is active
        (checked in the same transaction)."""
        run_id = now()[:10].replace("-", "") + "-" + uuid.uuid4().hex[:8]
        stamp = now()
        with self._h.immediate():
            self._refuse_if_active()
            self._db["training_runs"].insert(
                {
                    "id": run_id,
                    "persona_id": persona_id,
                    "export_name": export_name,
                    "speaker": speaker,
                    "config": json.dumps(config, ensure_ascii=False),
                    "status": "queued",
                    "created": stamp,
                    "updated": stamp,
                    **owner(),
                }
            )
        return self.get(run_id)

    def requeue(self, run_id: str, expected: tuple[str, ...] = ("failed", "cancelled")) -> bool:
        """A failed or cancelled run back to queued, owned by this process, with no error;
        raises RunActive if another run is active. False if the run is not in `expected`."""
        with self._h.immediate() as db:
            self._refuse_if_active()
            marks = ",".join("?" * len(expected))
            sets = {"status": "queued", "error": None, "pid": None, "updated": now(), **owner()}
            cur = db.execute(
                f"UPDATE training_runs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ? AND status IN ({marks})",
                [*sets.values(), run_id, *expected],
            )
        return cur.rowcount > 0

    def _refuse_if_active(self) -> None:
        busy = self.active()
        if busy:
            raise RunActive(busy[0])

    def get(self, run_id: str) -> dict:
        rows = list(self._db["training_runs"].rows_where("id = ?", [run_id]))
        if not rows:
            raise NotFound(f"There is no training run '{run_id}'.")
        return _decode(rows[0])

    def list(self, limit: int = 100) -> list[dict]:
        rows = self._db["training_runs"].rows_where(order_by="created DESC", limit=limit)
        return [_decode(r) for r in rows]

    def active(self) -> list[dict]:
        marks = ",".join("?" * len(ACTIVE))
        return [_decode(r) for r in self._db["training_runs"].rows_where(f"status IN ({marks})", list(ACTIVE))]

    def update(self, run_id: str, **fields) -> dict:
        """Set columns; `config` and `evaluation` dicts are merged into the stored ones."""
        row = self.get(run_id)
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        out = {}
        for key, value in fields.items():
            if key in _JSON:
                value = json.dumps({**row[key], **(value or {})}, ensure_ascii=False)
            out[key] = value
        out["updated"] = now()
        with self._h.transaction():
            self._db["training_runs"].update(run_id, out)
        return self.get(run_id)

    def set_status_if(self, run_id: str, expected: tuple[str, ...], status: str, **fields) -> bool:
        """Change the status only if it is one of `expected` (one atomic statement)."""
        sets = {"status": status, "updated": now(), **fields}
        cols = ", ".join(f"{k} = ?" for k in sets)
        marks = ",".join("?" * len(expected))
        with self._h.transaction() as db:
            cur = db.execute(
                f"UPDATE training_runs SET {cols} WHERE id = ? AND status IN ({marks})",
                [*sets.values(), run_id, *expected],
            )
        return cur.rowcount > 0

    def add_progress(self, run_id: str, row: dict) -> None:
        keys = ("step", "loss", "eval_loss", "learning_rate", "tokens_per_s", "elapsed_s")
        with self._h.transaction():
            self._db["training_progress"].insert({"run_id": run_id, **{k: row.get(k) for k in keys}, "created": now()})

    def progress(self, run_id: str, since_id: int = 0) -> list[dict]:
        rows = self._db["training_progress"].rows_where("run_id = ? AND id > ?", [run_id, since_id], order_by="id")
        return [dict(r) for r in rows]

    def drop_progress_after(self, run_id: str, step: int) -> None:
        """Forget progress past `step` (a resumed run replays the steps after its checkpoint)."""
        with self._h.transaction():
            self._db.execute("DELETE FROM training_progress WHERE run_id = ? AND step > ?", [run_id, step])

    def delete(self, run_id: str) -> None:
        self.get(run_id)
        with self._h.transaction():
            self._db.execute("DELETE FROM training_progress WHERE run_id = ?", [run_id])
            self._db["training_runs"].delete(run_id)
