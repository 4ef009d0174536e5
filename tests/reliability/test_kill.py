"""kill -9 while conversations, adapter versions and a streamed reply are being written:
after each kill the database passes `PRAGMA integrity_check`, every item the writer
reported as committed is there unchanged, and no half-written adapter folder is left."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from storage.store import Store
from tests.reliability.crash_writer import digest

ROOT = Path(__file__).resolve().parents[2]


class Writer:
    def __init__(self, home: Path, adapter: Path, model: Path | None):
        args = [sys.executable, "-m", "tests.reliability.crash_writer", str(home), str(adapter)] + ([str(model)] if model else [])
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[list[str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split()
            # a kill can cut the last line short: only whole lines count as reported
            if line.endswith("\n") and parts and len(parts) == {"MSG": 3, "ADAPTER": 3, "REPLY": 3, "USER": 2, "DELTA": 2}.get(parts[0], 1):
                self.lines.append(parts)

    def wait_for(self, pred, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred(self.lines):
                return
            assert self.proc.poll() is None, f"the writer exited early: {self.lines[-5:]}"
            time.sleep(0.02)
        raise AssertionError(f"the writer did not get there in {timeout} s: {self.lines[-5:]}")

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)  # lines the writer flushed before dying are still read
        return self.lines


def check_survivors(home: Path, lines: list[list[str]]) -> dict:
    store = Store(home)  # what a restart does: open, migrate, sweep crash leftovers
    db = store.handle.db
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    counts = {"messages": 0, "adapters": 0, "replies": 0}
    for kind, *rest in lines:
        if kind == "MSG":
            assert digest(store.conversations.message(int(rest[0]))["content"]) == rest[1]
            counts["messages"] += 1
        elif kind in ("REPLY", "USER"):
            msg = store.conversations.message(int(rest[0]))
            if kind == "REPLY":
                assert digest(msg["content"]) == rest[1] and msg["persona_name"] == "Keeper"
                counts["replies"] += 1
        elif kind == "ADAPTER":
            row = store.adapters.get(int(rest[0]))
            weights = store.adapters.folder(row) / "adapter_model.safetensors"
            assert hashlib.sha256(weights.read_bytes()).hexdigest() == rest[1] == row["sha256"]
            counts["adapters"] += 1
    # no temp or orphan folders survive the restart's sweep; every row's folder is whole
    for child in (home / "adapters" / "keeper").iterdir():
        assert not child.name.startswith(".tmp-")
    for row in store.adapters.versions("keeper"):
        assert (store.adapters.folder(row) / "adapter_model.safetensors").is_file()
    for conv in store.conversations.list():
        store.conversations.path(conv["id"])  # the shown branch walks without a missing link
    return counts


def test_kill_9_while_writing_and_streaming(tiny_model_dir, tiny_adapters, chorus_home):
    rng = random.Random(7)
    survived = []
    # 3 kills at random moments while conversations and adapter versions are written
    for _ in range(3):
        w = Writer(chorus_home, tiny_adapters["a"], None)
        w.wait_for(lambda ls: any(l[0] == "MSG" for l in ls))
        time.sleep(rng.uniform(0.2, 1.2))
        survived.append(check_survivors(chorus_home, w.kill()))
    # 2 kills while a reply streams (and conversations are written beside it)
    for _ in range(2):
        w = Writer(chorus_home, tiny_adapters["a"], tiny_model_dir)
        w.wait_for(lambda ls: any(l[0] == "REPLY" for l in ls) and ls[-1][0] in ("DELTA", "MSG", "ADAPTER")
                   and any(l[0] == "DELTA" for l in ls[[l[0] for l in ls].index("REPLY"):]))
        time.sleep(rng.uniform(0.0, 0.3))
        lines = w.kill()
        counts = check_survivors(chorus_home, lines)
        assert counts["replies"] >= 1
        # the reply cut off mid-stream: its user message is there; nothing half-saved replaced it
        store = Store(chorus_home)
        last_user = int([l for l in lines if l[0] == "USER"][-1][1])
        assert store.conversations.message(last_user)["role"] == "user"
        survived.append(counts)
    print("\nkill -9 survivors:", survived)
    assert all(c["messages"] > 0 for c in survived)
