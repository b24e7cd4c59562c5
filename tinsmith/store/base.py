"""The store interface: what the API server needs to keep across restarts.

SQLite implements it (``tinsmith.store.sqlite``); another database can, by implementing these
methods with the same semantics (in particular: ``add_checkpoint`` refuses a duplicate path).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from tinsmith.store.records import (
    CheckpointRecord,
    FutureResult,
    MetricKind,
    MetricPoint,
    RunRecord,
    SessionRecord,
)


class MetadataStore(Protocol):
    """Everything the server must remember across a restart: runs, checkpoints, API keys,
    sessions and futures."""

    def put_run(self, run: RunRecord) -> None:
        """Insert a run, or replace its owner's own; raises ``ConflictError`` if another owner
        has a run with that id (rows never change owner)."""
        ...

    def get_run(self, training_run_id: str) -> RunRecord | None: ...

    def touch_run(self, training_run_id: str, when: dt.datetime) -> None: ...

    def list_runs(self, owner: str | None, limit: int, offset: int) -> tuple[list[RunRecord], int]:
        """Runs newest first, with the total count (``owner`` None: every owner)."""
        ...

    def add_metrics(
        self,
        training_run_id: str,
        kind: MetricKind,
        metrics: dict[str, float],
        at: dt.datetime,
        keep: int,
    ) -> int:
        """Record one training call's metrics; returns its step (an ``optim_step`` closes the
        step it belongs to). Only the run's newest ``keep`` points are kept."""
        ...

    def run_metrics(self, training_run_id: str, limit: int) -> list[MetricPoint]:
        """The run's newest ``limit`` metric points, oldest first."""
        ...

    def record_sequences(self, sequence_ids: list[str], owner: str, session_id: str) -> None:
        """Remember sampled sequence ids (``record_stability_info``) with their owner."""
        ...

    def sequence_owner(self, sequence_id: str) -> str | None: ...

    def add_checkpoint(self, record: CheckpointRecord, replace: bool) -> None:
        """Record a checkpoint; raises ``ConflictError`` if its path exists and ``replace`` is
        False, or if it exists under another owner (rows never change owner)."""
        ...

    def get_checkpoint(self, tinker_path: str) -> CheckpointRecord | None: ...

    def list_checkpoints(
        self,
        training_run_id: str | None,
        owner: str | None,
        limit: int,
        offset: int,
        live_at: dt.datetime | None = None,
    ) -> tuple[list[CheckpointRecord], int]:
        """Checkpoints newest first, of one run or of an owner, with the total count; with
        ``live_at``, only those not expired by then."""
        ...

    def latest_checkpoint(
        self, training_run_id: str, checkpoint_type: str
    ) -> CheckpointRecord | None: ...

    def update_checkpoint(self, record: CheckpointRecord) -> None:
        """Replace the mutable fields (public, expires_at) of an existing checkpoint."""
        ...

    def delete_checkpoint(self, tinker_path: str, storage_key: str) -> None:
        """Delete the record of ``tinker_path`` if it is still the version whose archive is
        ``storage_key`` (a save to the same path since then keeps its record)."""
        ...

    def expired_checkpoints(self, now: dt.datetime) -> list[CheckpointRecord]: ...

    def storage_key_in_use(self, storage_key: str) -> bool:
        """Whether a checkpoint record (a copy shares its source's archive) names this key."""
        ...

    def has_checkpoint_content(self, sha256: str) -> bool:
        """Whether any recorded checkpoint's archive has this sha256."""
        ...

    def add_api_key(self, key_hash: str, tenant: str) -> None: ...

    def tenant_for_key(self, key_hash: str) -> str | None: ...

    def revoke_api_keys(self, key_hash: str | None, tenant: str | None) -> int:
        """Delete the key with this hash, or every key of ``tenant``; returns how many."""
        ...

    def claim_session(self, session_id: str, owner: str) -> str:
        """The owner of ``session_id``, which becomes ``owner`` if the id was unknown (the first
        tenant to use an id owns it, atomically)."""
        ...

    def session_owner(self, session_id: str) -> str | None: ...

    def put_session(self, record: SessionRecord) -> str:
        """Record a new session with what its client said of it; returns the owner (a session
        id that exists keeps its row and owner)."""
        ...

    def get_session(self, session_id: str) -> SessionRecord | None: ...

    def update_session(self, record: SessionRecord) -> None:
        """Replace a session's record (its owner's only)."""
        ...

    def list_sessions(
        self, owner: str, limit: int, offset: int, before: tuple[dt.datetime, str] | None = None
    ) -> list[SessionRecord]:
        """``owner``'s sessions newest first (by creation, then id), optionally only those
        before ``(created_at, session_id)``."""
        ...

    def session_runs(self, session_id: str) -> list[str]:
        """The training run ids created in a session, oldest first."""
        ...

    def add_sampler(self, sampler_id: str, session_id: str) -> None:
        """Record a sampling session of a session (a known id is kept)."""
        ...

    def session_samplers(self, session_id: str) -> list[str]: ...

    def session_checkpoints(self, session_id: str) -> tuple[int, int]:
        """How many checkpoints the session's runs have, and their total size in bytes."""
        ...

    def add_future(self, request_id: str, idempotency_key: str | None, owner: str) -> str:
        """Record a submitted future; a known idempotency key returns the first future's id."""
        ...

    def finish_future(self, request_id: str, result: FutureResult) -> None: ...

    def get_future(self, request_id: str) -> tuple[str, FutureResult | None] | None:
        """(owner, result or None while pending), or None for an unknown id."""
        ...

    def forget_futures(self, finished_before: dt.datetime) -> int:
        """Delete finished futures created before ``finished_before``; returns how many."""
        ...

    def interrupt_pending_futures(self, result: FutureResult) -> int:
        """Give every unfinished future of a previous process ``result``; returns how many."""
        ...

    def close(self) -> None: ...
