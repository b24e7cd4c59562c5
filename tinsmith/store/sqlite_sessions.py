"""The SQLite store's sessions: who owns each, what its client said of it, its sampling
sessions, and what its runs and checkpoints add up to (a mixin of ``SQLiteStore``, which gives
it the connection)."""

from __future__ import annotations

import datetime as dt

from tinsmith.store.records import SessionRecord, utcnow

SQL_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def sql_time(when: dt.datetime) -> str:
    """ISO UTC with fixed width, so text order is time order (every timestamp the store
    writes)."""
    return when.astimezone(dt.UTC).strftime(SQL_TIME_FORMAT)


class SessionRows:
    """Session methods of the metadata store, over the ``sessions``, ``samplers``, ``runs`` and
    ``checkpoints`` tables."""

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        raise NotImplementedError  # SQLiteStore's

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        raise NotImplementedError  # SQLiteStore's

    # ----- sessions -------------------------------------------------------------------------
    def claim_session(self, session_id: str, owner: str) -> str:
        # A session row never changes owner, so the first INSERT wins and the SELECT reads it.
        self._write(
            "INSERT OR IGNORE INTO sessions (session_id, owner, created_at) VALUES (?, ?, ?)",
            (session_id, owner, sql_time(utcnow())),
        )
        return str(self.session_owner(session_id))

    def session_owner(self, session_id: str) -> str | None:
        rows = self._rows("SELECT owner FROM sessions WHERE session_id = ?", (session_id,))
        return str(rows[0][0]) if rows else None

    def put_session(self, record: SessionRecord) -> str:
        self._write(
            "INSERT OR IGNORE INTO sessions (session_id, owner, created_at, body) "
            "VALUES (?, ?, ?, ?)",
            (
                record.session_id,
                record.owner,
                sql_time(record.created_at),
                record.model_dump_json(),
            ),
        )
        return str(self.session_owner(record.session_id))

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._rows(
            "SELECT session_id, owner, created_at, body FROM sessions WHERE session_id = ?",
            (session_id,),
        )
        return _session(rows[0]) if rows else None

    def update_session(self, record: SessionRecord) -> None:
        self._write(
            "UPDATE sessions SET body = ? WHERE session_id = ? AND owner = ?",
            (record.model_dump_json(), record.session_id, record.owner),
        )

    def list_sessions(
        self, owner: str, limit: int, offset: int, before: tuple[dt.datetime, str] | None = None
    ) -> list[SessionRecord]:
        where, args = "owner = ?", [owner]
        if before is not None:
            where += " AND (created_at < ? OR (created_at = ? AND session_id < ?))"
            args += [sql_time(before[0]), sql_time(before[0]), before[1]]
        rows = self._rows(
            "SELECT session_id, owner, created_at, body FROM sessions WHERE "
            f"{where} ORDER BY created_at DESC, session_id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [_session(row) for row in rows]

    def session_runs(self, session_id: str) -> list[str]:
        rows = self._rows(
            "SELECT training_run_id FROM runs WHERE json_extract(body, '$.session_id') = ? "
            "ORDER BY created_at",
            (session_id,),
        )
        return [str(row[0]) for row in rows]

    def add_sampler(self, sampler_id: str, session_id: str) -> None:
        self._write(
            "INSERT OR IGNORE INTO samplers VALUES (?, ?, ?)",
            (sampler_id, session_id, sql_time(utcnow())),
        )

    def session_samplers(self, session_id: str) -> list[str]:
        rows = self._rows(
            "SELECT sampler_id FROM samplers WHERE session_id = ? ORDER BY created_at",
            (session_id,),
        )
        return [str(row[0]) for row in rows]

    def session_checkpoints(self, session_id: str) -> tuple[int, int]:
        rows = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(c.body, '$.size_bytes')), 0) "
            "FROM checkpoints c JOIN runs r ON c.training_run_id = r.training_run_id "
            "WHERE json_extract(r.body, '$.session_id') = ?",
            (session_id,),
        )
        count, size = rows[0]
        return int(count or 0), int(size or 0)  # type: ignore[call-overload]


def _session(row: tuple[object, ...]) -> SessionRecord:
    """A sessions row as its record (a row written before sessions had a body: active)."""
    session_id, owner, created_at, body = row
    if body is None:
        return SessionRecord(
            session_id=str(session_id),
            owner=str(owner),
            created_at=dt.datetime.strptime(str(created_at), SQL_TIME_FORMAT).replace(
                tzinfo=dt.UTC
            ),
        )
    return SessionRecord.model_validate_json(str(body))
