"""The TTL reaper against a save to the same path (real SQLite store and local storage): the
reaper reads the expired records, a save then overwrites one of them, and deleting what the
reaper read removes neither the new record nor its archive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tinsmith.cluster.checkpoints import open_checkpoint_service
from tinsmith.storage.config import StorageConfig
from tinsmith.store.records import CheckpointRecord, utcnow
from tinsmith.types.training import LoraConfig

PATH = "tinker://run-1:train:0/weights/ckpt"


def record(key: str, expires: dt.datetime | None) -> CheckpointRecord:
    return CheckpointRecord(
        training_run_id="run-1:train:0",
        checkpoint_id="weights/ckpt",
        checkpoint_type="training",
        tinker_path=PATH,
        owner="tenant-a",
        base_model="m",
        lora=LoraConfig(rank=4),
        storage_key=key,
        size_bytes=5,
        sha256="0" * 64,
        step=1,
        has_optimizer=False,
        expires_at=expires,
    )


def test_a_save_between_the_reapers_read_and_delete_survives(tmp_path: Path) -> None:
    service = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    source = tmp_path / "archive.tar"
    source.write_bytes(b"bytes")
    for key in ("run-1/weights/ckpt-old.tar", "run-1/weights/ckpt-new.tar"):
        service.storage.put(key, source)
    past = utcnow() - dt.timedelta(seconds=1)
    service.commit(record("run-1/weights/ckpt-old.tar", past), overwrite=False)

    expired = service.store.expired_checkpoints(utcnow())  # what the reaper read
    assert [r.storage_key for r in expired] == ["run-1/weights/ckpt-old.tar"]
    service.commit(record("run-1/weights/ckpt-new.tar", None), overwrite=True)  # a new save
    for old in expired:
        service.delete(old)

    kept = service.store.get_checkpoint(PATH)
    assert kept is not None and kept.storage_key == "run-1/weights/ckpt-new.tar"
    assert service.storage.exists("run-1/weights/ckpt-new.tar")
    assert not service.storage.exists("run-1/weights/ckpt-old.tar")
    assert service.reap() == 0 and service.store.get_checkpoint(PATH) == kept
    service.delete(kept)  # a delete of the current version still deletes it
    assert service.store.get_checkpoint(PATH) is None


def test_an_expired_checkpoint_is_hidden_at_once_and_deleted_by_the_reaper(tmp_path: Path) -> None:
    """Readers (listings, loads) never see an expired checkpoint, and never pay for its deletion
    (a slow object store would hold up the request): the background reaper deletes it."""
    service = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    source = tmp_path / "archive.tar"
    source.write_bytes(b"bytes")
    service.storage.put("run-1/weights/ckpt-old.tar", source)
    service.commit(record("run-1/weights/ckpt-old.tar", utcnow() - dt.timedelta(seconds=1)), False)
    assert service.get(PATH) is None
    assert service.list("run-1:train:0", "tenant-a", 10, 0) == ([], 0)
    assert service.storage.exists("run-1/weights/ckpt-old.tar")  # not deleted by the readers
    assert service.reap() == 1
    assert not service.storage.exists("run-1/weights/ckpt-old.tar")
    assert service.store.get_checkpoint(PATH) is None


def test_a_copy_keeps_the_shared_archive_until_the_last_record_goes(tmp_path: Path) -> None:
    """copy_weights records a second checkpoint on the source's archive: deleting (or
    overwriting, or expiring) either record leaves the archive while the other names it."""
    from tinsmith.store.records import RunRecord

    service = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    archive = tmp_path / "archive.tar"
    archive.write_bytes(b"bytes")
    key = "run-1/weights/ckpt-a.tar"
    service.storage.put(key, archive)
    source = record(key, None)
    service.commit(source, overwrite=False)
    run = RunRecord(
        training_run_id="sess-c:train:0",
        session_id="sess-c",
        base_model="m",
        owner="tenant-b",
        lora=LoraConfig(rank=4),
    )
    path = service.copy(source, run, ttl_seconds=3600)
    assert path == "tinker://sess-c:train:0/weights/ckpt"
    assert service.copy(source, run, ttl_seconds=3600) == path  # a retry: the same copy
    copied = service.store.get_checkpoint(path)
    assert copied is not None and copied.storage_key == key and copied.owner == "tenant-b"
    assert copied.expires_at is not None and not copied.public
    service.delete(source)
    assert service.storage.exists(key) and service.store.get_checkpoint(PATH) is None
    service.delete(copied)
    assert not service.storage.exists(key)
