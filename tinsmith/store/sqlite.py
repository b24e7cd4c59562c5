"""SQLite implementation of the metadata store (WAL mode, one file).

``synchronous=FULL``: every committed write (an acknowledged checkpoint, a new API key, a finished
future) is on disk before the call returns, so it survives a power loss, not only a crash.

Each row keeps the record as JSON beside the few columns that queries filter or sort on, so
adding a field to a record needs no migration. One connection guarded by a lock: the server's
writes are small and rare next to training steps.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

from tinsmith.errors import ConflictError
from tinsmith.store.records import CheckpointRecord, FutureResult, RunRecord, utcnow
from tinsmith.store.sqlite_metrics import METRICS_SCHEMA, MetricRows
from tinsmith.store.sqlite_sequences import SEQUENCES_SCHEMA, SequenceRows
from tinsmith.store.sqlite_sessions import SessionRows, sql_time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    training_run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created_at);
CREATE TABLE IF NOT EXISTS checkpoints (
    tinker_path TEXT PRIMARY KEY,
    training_run_id TEXT NOT NULL,
    checkpoint_type TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints(training_run_id, created_at);
CREATE INDEX IF NOT EXISTS checkpoints_owner ON checkpoints(owner, created_at);
CREATE INDEX IF NOT EXISTS checkpoints_expiry ON checkpoints(expires_at);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_owner ON sessions(owner, created_at);
CREATE INDEX IF NOT EXISTS runs_session ON runs(json_extract(body, '$.session_id'));
CREATE TABLE IF NOT EXISTS samplers (
    sampler_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samplers_session ON samplers(session_id, created_at);
CREATE TABLE IF NOT EXISTS futures (
    request_id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT,
    failed INTEGER NOT NULL DEFAULT 0,
    body BLOB,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS futures_created ON futures(created_at);
"""


class SQLiteStore(SessionRows, MetricRows, SequenceRows):
    """The ``MetadataStore`` the server uses: one SQLite file in the data directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA + METRICS_SCHEMA + SEQUENCES_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since a data directory may have been created: sessions' ``body`` (a
        SessionRecord; NULL in rows of older servers, read as a plain active session)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "body" not in columns:
            self._db.execute("ALTER TABLE sessions ADD COLUMN body TEXT")

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        """Run one statement; returns the rows it changed (0 for an ``INSERT ... ON CONFLICT DO
        UPDATE ... WHERE`` whose WHERE refused the update)."""
        with self._lock:
            return int(self._db.execute(sql, args).rowcount)

    # ----- runs -----------------------------------------------------------------------------
    def put_run(self, run: RunRecord) -> None:
        changed = self._write(
            "INSERT INTO runs VALUES (?, ?, ?, ?) ON CONFLICT(training_run_id) DO UPDATE SET "
            "created_at = excluded.created_at, body = excluded.body "
            "WHERE runs.owner = excluded.owner",
            (run.training_run_id, run.owner, sql_time(run.created_at), run.model_dump_json()),
        )
        if not changed:
            raise ConflictError(f"training run {run.training_run_id!r} already exists")

    def get_run(self, training_run_id: str) -> RunRecord | None:
        rows = self._rows("SELECT body FROM runs WHERE training_run_id = ?", (training_run_id,))
        return RunRecord.model_validate_json(str(rows[0][0])) if rows else None

    def touch_run(self, training_run_id: str, when: dt.datetime) -> None:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM runs WHERE training_run_id = ?", (training_run_id,)
            ).fetchall()
            if not rows:
                return
            run = RunRecord.model_validate_json(str(rows[0][0]))
            run.last_request_time = when
            self._db.execute(
                "UPDATE runs SET body = ? WHERE training_run_id = ?",
                (run.model_dump_json(), training_run_id),
            )

    def list_runs(self, owner: str | None, limit: int, offset: int) -> tuple[list[RunRecord], int]:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        total = int(str(self._rows(f"SELECT COUNT(*) FROM runs {where}", args)[0][0]))
        rows = self._rows(
            (
                f"SELECT body FROM runs {where} ORDER BY created_at DESC, "
                "training_run_id LIMIT ? OFFSET ?"
            ),
            (*args, limit, offset),
        )
        return [RunRecord.model_validate_json(str(r[0])) for r in rows], total

    # ----- checkpoints ------------------------------------------------------------------------
    def add_checkpoint(self, record: CheckpointRecord, replace: bool) -> None:
        # Only the owner's own row is ever replaced: a conflict with another owner's is refused.
        upsert = (
            " ON CONFLICT(tinker_path) DO UPDATE SET training_run_id = excluded.training_run_id, "
            "checkpoint_type = excluded.checkpoint_type, created_at = excluded.created_at, "
            "expires_at = excluded.expires_at, body = excluded.body "
            "WHERE checkpoints.owner = excluded.owner"
        )
        try:
            changed = self._write(
                f"INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?){upsert if replace else ''}",
                (
                    record.tinker_path,
                    record.training_run_id,
                    record.checkpoint_type,
                    record.owner,
                    sql_time(record.created_at),
                    sql_time(record.expires_at) if record.expires_at else None,
                    record.model_dump_json(),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"checkpoint {record.tinker_path!r} already exists") from exc
        if not changed:
            raise ConflictError(f"checkpoint {record.tinker_path!r} already exists")

    def get_checkpoint(self, tinker_path: str) -> CheckpointRecord | None:
        rows = self._rows("SELECT body FROM checkpoints WHERE tinker_path = ?", (tinker_path,))
        return CheckpointRecord.model_validate_json(str(rows[0][0])) if rows else None

    def list_checkpoints(
        self,
        training_run_id: str | None,
        owner: str | None,
        limit: int,
        offset: int,
        live_at: dt.datetime | None = None,
    ) -> tuple[list[CheckpointRecord], int]:
        clauses: list[str] = []
        args: list[object] = []
        if live_at is not None:
            clauses.append("(expires_at IS NULL OR expires_at > ?)")
            args.append(sql_time(live_at))
        if training_run_id is not None:
            clauses.append("training_run_id = ?")
            args.append(training_run_id)
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = int(str(self._rows(f"SELECT COUNT(*) FROM checkpoints {where}", tuple(args))[0][0]))
        rows = self._rows(
            (
                f"SELECT body FROM checkpoints {where} ORDER BY created_at "
                "DESC, tinker_path LIMIT ? OFFSET ?"
            ),
            (*args, limit, offset),
        )
        return [CheckpointRecord.model_validate_json(str(r[0])) for r in rows], total

    def latest_checkpoint(
        self, training_run_id: str, checkpoint_type: str
    ) -> CheckpointRecord | None:
        rows = self._rows(
            "SELECT body FROM checkpoints WHERE training_run_id = ? AND checkpoint_type = ? "
            "ORDER BY created_at DESC LIMIT 1",
            (training_run_id, checkpoint_type),
        )
        return CheckpointRecord.model_validate_json(str(rows[0][0])) if rows else None

    def update_checkpoint(self, record: CheckpointRecord) -> None:
        self._write(
            "UPDATE checkpoints SET expires_at = ?, body = ? WHERE tinker_path = ?",
            (
                sql_time(record.expires_at) if record.expires_at else None,
                record.model_dump_json(),
                record.tinker_path,
            ),
        )

    def delete_checkpoint(self, tinker_path: str, storage_key: str) -> None:
        self._write(
            "DELETE FROM checkpoints WHERE tinker_path = ? "
            "AND json_extract(body, '$.storage_key') = ?",
            (tinker_path, storage_key),
        )

    def expired_checkpoints(self, now: dt.datetime) -> list[CheckpointRecord]:
        rows = self._rows(
            "SELECT body FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at <= ?",
            (sql_time(now),),
        )
        return [CheckpointRecord.model_validate_json(str(r[0])) for r in rows]

    def storage_key_in_use(self, storage_key: str) -> bool:
        rows = self._rows(
            "SELECT 1 FROM checkpoints WHERE json_extract(body, '$.storage_key') = ? LIMIT 1",
            (storage_key,),
        )
        return bool(rows)

    def has_checkpoint_content(self, sha256: str) -> bool:
        rows = self._rows(
            "SELECT 1 FROM checkpoints WHERE json_extract(body, '$.sha256') = ? LIMIT 1", (sha256,)
        )
        return bool(rows)

    # ----- API keys ---------------------------------------------------------------------------
    def add_api_key(self, key_hash: str, tenant: str) -> None:
        self._write("INSERT INTO api_keys VALUES (?, ?, ?)", (key_hash, tenant, sql_time(utcnow())))

    def tenant_for_key(self, key_hash: str) -> str | None:
        rows = self._rows("SELECT tenant FROM api_keys WHERE key_hash = ?", (key_hash,))
        return str(rows[0][0]) if rows else None

    def revoke_api_keys(self, key_hash: str | None, tenant: str | None) -> int:
        return self._write(
            "DELETE FROM api_keys WHERE key_hash = ? OR tenant = ?", (key_hash, tenant)
        )

    # ----- futures --------------------------------------------------------------------------
    def add_future(self, request_id: str, idempotency_key: str | None, owner: str) -> str:
        """Record a submitted future; with a known idempotency key, returns the first one's id."""
        with self._lock:
            if idempotency_key is not None:
                rows = self._db.execute(
                    "SELECT request_id FROM futures WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchall()
                if rows:
                    return str(rows[0][0])
            self._db.execute(
                (
                    "INSERT INTO futures (request_id, idempotency_key, owner, state, "
                    "created_at) VALUES (?, ?, ?, ?, ?)"
                ),
                (request_id, idempotency_key, owner, "pending", sql_time(utcnow())),
            )
            return request_id

    def finish_future(self, request_id: str, result: FutureResult) -> None:
        self._write(
            (
                "UPDATE futures SET state = 'done', kind = ?, failed = ?, "
                "body = ? WHERE request_id = ?"
            ),
            (result.kind, int(result.failed), result.body, request_id),
        )

    def get_future(self, request_id: str) -> tuple[str, FutureResult | None] | None:
        """(owner, result or None while pending), or None for an unknown id."""
        rows = self._rows(
            "SELECT owner, state, kind, failed, body FROM futures WHERE request_id = ?",
            (request_id,),
        )
        if not rows:
            return None
        owner, status, kind, failed, body = rows[0]
        if status != "done":
            return str(owner), None
        assert isinstance(body, bytes)
        return str(owner), FutureResult(
            kind="proto" if kind == "proto" else "json", body=body, failed=bool(failed)
        )

    def forget_futures(self, finished_before: dt.datetime) -> int:
        return self._write(
            "DELETE FROM futures WHERE state = 'done' AND created_at < ?",
            (sql_time(finished_before),),
        )

    def interrupt_pending_futures(self, result: FutureResult) -> int:
        """At start-up: futures a previous process never finished get ``result`` (a failure)."""
        return self._write(
            "UPDATE futures SET state = 'done', kind = ?, failed = ?, body = ? "
            "WHERE state = 'pending'",
            (result.kind, int(result.failed), result.body),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
