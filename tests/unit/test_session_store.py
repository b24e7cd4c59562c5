"""The store's sessions: records round-trip, listing is newest first and pages by (created_at,
id), a data directory of a server from before sessions had records opens and reads its sessions
as active, and a session's runs, sampling sessions and checkpoint totals are found by its id."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from tinsmith.store.records import CheckpointRecord, RunRecord, SessionRecord
from tinsmith.store.sqlite import SQLiteStore
from tinsmith.types.training import LoraConfig


def test_an_older_data_directory_opens_and_its_sessions_read_as_active(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, owner TEXT, created_at TEXT)")
    old.execute("INSERT INTO sessions VALUES ('sess-old', 'alice', '2026-11-01T10:00:00.000000Z')")
    old.commit()
    old.close()
    store = SQLiteStore(path)
    record = store.get_session("sess-old")
    assert record is not None and record.owner == "alice" and record.state == "active"
    assert record.created_at == dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)
    record.project_id = "p"
    store.update_session(record)
    assert store.get_session("sess-old") == record


def test_sessions_list_newest_first_and_page_by_their_position(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "meta.sqlite")
    start = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    for i in range(5):
        when = start + dt.timedelta(seconds=i // 2)  # pairs share a creation time
        store.put_session(SessionRecord(session_id=f"sess-{i}", owner="a", created_at=when))
    store.put_session(SessionRecord(session_id="sess-b", owner="b"))
    assert store.put_session(SessionRecord(session_id="sess-0", owner="b")) == "a"  # kept
    ids = [r.session_id for r in store.list_sessions("a", 10, 0)]
    assert ids == ["sess-4", "sess-3", "sess-2", "sess-1", "sess-0"]
    third = store.list_sessions("a", 10, 0)[2]
    after = store.list_sessions("a", 10, 0, before=(third.created_at, third.session_id))
    assert [r.session_id for r in after] == ["sess-1", "sess-0"]
    assert [r.session_id for r in store.list_sessions("a", 2, 1)] == ["sess-3", "sess-2"]


def test_a_sessions_runs_samplers_and_checkpoints_are_found_by_its_id(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "meta.sqlite")
    lora = LoraConfig(rank=2)
    for run_id, session in (("s1:train:0", "s1"), ("s1:train:1", "s1"), ("s10:train:0", "s10")):
        store.put_run(
            RunRecord(
                training_run_id=run_id, session_id=session, base_model="m", owner="a", lora=lora
            )
        )
    for run_id, name, size in (
        ("s1:train:1", "x", 100),
        ("s1:train:1", "y", 20),
        ("s10:train:0", "z", 5),
    ):
        store.add_checkpoint(
            CheckpointRecord(
                training_run_id=run_id,
                checkpoint_id=f"weights/{name}",
                checkpoint_type="training",
                tinker_path=f"tinker://{run_id}/weights/{name}",
                owner="a",
                base_model="m",
                lora=lora,
                storage_key=name,
                size_bytes=size,
                sha256="0" * 64,
                step=1,
                has_optimizer=True,
            ),
            replace=False,
        )
    store.add_sampler("s1:sample:0", "s1")
    store.add_sampler("s1:sample:0", "s1")  # a retried create: recorded once
    assert store.session_runs("s1") == ["s1:train:0", "s1:train:1"]
    assert store.session_samplers("s1") == ["s1:sample:0"]
    assert store.session_checkpoints("s1") == (2, 120)
    assert store.session_checkpoints("s2") == (0, 0)
