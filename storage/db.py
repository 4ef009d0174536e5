"""Opening `chorus.db`: WAL mode, foreign keys, a busy timeout, and migrations before use.

Every thread gets its own connection (sqlite3 connections are not shared across threads);
WAL lets readers and the one writer work at the same time.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from storage.errors import StorageError
from storage.migrations import migrations


def decode_json(row: dict, fields: dict) -> dict:
    """A copy of `row` with its JSON text columns parsed: `fields` maps each column to the
    kind it must hold (dict or list); a column that is empty, unreadable or of another kind
    reads as an empty one, so one damaged value does not hide the rest of the row."""
    row = dict(row)
    for key, kind in fields.items():
        try:
            value = json.loads(row.get(key) or "null")
        except json.JSONDecodeError:
            value = None
        row[key] = value if isinstance(value, kind) else kind()
    return row


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def save_failed(what: str, exc: BaseException) -> StorageError:
    """A write that failed on the filesystem or in SQLite, said for the user."""
    reason = getattr(exc, "strerror", None) or str(exc)
    text = reason.lower()
    if getattr(exc, "errno", None) == errno.ENOSPC or "full" in text or "no space" in text:
        return StorageError(
            f"Could not save {what}: the disk is full ({reason}). Free some disk space and try again; "
            "nothing saved before was changed."
        )
    return StorageError(f"Could not save {what} ({reason}). Nothing saved before was changed.")


def connect(path: Path) -> Database:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class DatabaseHandle:
    """Thread-local connections to one database file, migrated on first open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        # Deferred SQLite transactions that read then write can fail with SQLITE_BUSY at
        # once instead of waiting; one writer at a time per process avoids that.
        self._write_lock = threading.RLock()
        try:
            db = self.db
            migrations.apply(db)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"The database {self.path} cannot be opened ({exc}). Is the disk full or the file damaged?") from None

    @property
    def db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            self._local.db = db
        return db

    @contextmanager
    def immediate(self):
        """A write transaction that takes SQLite's write lock at its start (BEGIN IMMEDIATE),
        so a check and the write that depends on it see no other writer in between, in
        this process or another. Nested transactions inside it become savepoints."""
        db = self.db
        try:
            with self._write_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.conn.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower() or "disk" in str(exc).lower():
                raise save_failed("your change", exc) from None
            raise

    @contextmanager
    def transaction(self):
        """One atomic write: everything inside commits together or not at all."""
        try:
            with self._write_lock, self.db.atomic():
                yield self.db
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower() or "disk" in str(exc).lower():
                raise save_failed("your change", exc) from None
            raise
