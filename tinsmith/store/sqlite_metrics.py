"""The SQLite store's training metrics: each ``forward_backward``, ``forward`` and
``optim_step``'s metrics with its time and step, the newest ``keep`` per run (a mixin of
``SQLiteStore``, which gives it the connection). The console plots them."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading

from tinsmith.store.records import MetricKind, MetricPoint
from tinsmith.store.sqlite_sessions import SQL_TIME_FORMAT, sql_time

METRICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    training_run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_metrics_run ON run_metrics(training_run_id, seq);
CREATE TABLE IF NOT EXISTS run_steps (
    training_run_id TEXT PRIMARY KEY,
    steps INTEGER NOT NULL
);
"""


class MetricRows:
    """Metric methods of the metadata store, over the ``run_metrics`` and ``run_steps``
    tables. ``run_steps`` counts a run's optimizer steps, so a step number outlives the
    points that pruning drops."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def add_metrics(
        self,
        training_run_id: str,
        kind: MetricKind,
        metrics: dict[str, float],
        at: dt.datetime,
        keep: int,
    ) -> int:
        body = json.dumps({k: float(v) for k, v in metrics.items()}, allow_nan=True)
        with self._lock, self._db:  # commits, or rolls back on an error
            self._db.execute("BEGIN IMMEDIATE")  # one transaction: the step and the point agree
            row = self._db.execute(
                "SELECT steps FROM run_steps WHERE training_run_id = ?", (training_run_id,)
            ).fetchone()
            done = int(row[0]) if row else 0
            step = done + 1  # the step this call belongs to (an optim_step closes it)
            self._db.execute(
                "INSERT INTO run_metrics (training_run_id, step, kind, at, metrics) "
                "VALUES (?, ?, ?, ?, ?)",
                (training_run_id, step, kind, sql_time(at), body),
            )
            if kind == "optim_step":
                self._db.execute(
                    "INSERT INTO run_steps VALUES (?, 1) ON CONFLICT(training_run_id) "
                    "DO UPDATE SET steps = steps + 1",
                    (training_run_id,),
                )
            self._db.execute(
                "DELETE FROM run_metrics WHERE training_run_id = ? AND seq <= ("
                "SELECT seq FROM run_metrics WHERE training_run_id = ? "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (training_run_id, training_run_id, keep),
            )
        return step

    def run_metrics(self, training_run_id: str, limit: int) -> list[MetricPoint]:
        with self._lock:
            rows = self._db.execute(
                "SELECT step, kind, at, metrics FROM run_metrics WHERE training_run_id = ? "
                "ORDER BY seq DESC LIMIT ?",
                (training_run_id, limit),
            ).fetchall()
        return [
            MetricPoint(
                step=int(step),
                kind=kind,
                at=dt.datetime.strptime(str(at), SQL_TIME_FORMAT).replace(tzinfo=dt.UTC),
                metrics=json.loads(str(body)),
            )
            for step, kind, at, body in reversed(rows)
        ]
