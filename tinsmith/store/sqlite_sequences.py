"""The SQLite store's sampled sequences recorded for ``record_stability_info``: each sequence id
the server handed out, with its owner and session (a mixin of ``SQLiteStore``, which gives it
the connection). Provenance spans that name a sequence are checked against it; unlike finished
futures, these rows outlive ``limits.future_retention_seconds``."""

from __future__ import annotations

import sqlite3
import threading

from tinsmith.store.records import utcnow
from tinsmith.store.sqlite_sessions import sql_time

SEQUENCES_SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    sequence_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


class SequenceRows:
    """Recorded sequences, over the ``sequences`` table."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def record_sequences(self, sequence_ids: list[str], owner: str, session_id: str) -> None:
        now = sql_time(utcnow())
        rows = [(sid, owner, session_id, now) for sid in sequence_ids]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO sequences VALUES (?, ?, ?, ?)", rows)

    def sequence_owner(self, sequence_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT owner FROM sequences WHERE sequence_id = ?", (sequence_id,)
            ).fetchone()
        return None if row is None else str(row[0])
