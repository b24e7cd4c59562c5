"""Moving checkpoint directories in and out of storage, from whichever actor holds them.

Workers call these with an ``ArchiveRef`` (the storage config travels with the work item), so
every node reaches storage directly and no checkpoint bytes pass through the API server.
Downloads land in a cache keyed by the archive's sha256: identical content is fetched once per
node, and a tampered or truncated archive never reaches a worker.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from pydantic import Field

from tinsmith.storage import open_storage
from tinsmith.storage.archive import CorruptArchiveError, pack, sha256_file, unpack
from tinsmith.storage.base import CheckpointStorage, StoredObject
from tinsmith.storage.config import StorageConfig
from tinsmith.types.base import InternalModel


class ArchiveRef(InternalModel):
    """Where one checkpoint archive is (or is to be) stored."""

    storage: StorageConfig
    data_dir: str = Field(description="The server's data directory (local backend root, caches, staging).")
    key: str
    sha256: str | None = Field(default=None, description="Expected archive sha256 (known when reading).")


def staging_dir(data_dir: str) -> Path:
    path = Path(data_dir).expanduser() / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=8)
def _storage(config_json: str, data_dir: str) -> CheckpointStorage:
    """One backend (and S3 connection pool) per config in each process, not one per transfer."""
    return open_storage(StorageConfig.model_validate_json(config_json), data_dir)


def storage_of(ref: ArchiveRef) -> CheckpointStorage:
    return _storage(ref.storage.model_dump_json(), ref.data_dir)


def upload_dir(ref: ArchiveRef, directory: Path) -> StoredObject:
    """Pack ``directory`` and store it under ``ref.key``; the result is verified and complete."""
    storage = storage_of(ref)
    with tempfile.TemporaryDirectory(dir=staging_dir(ref.data_dir)) as tmp:
        archive = Path(tmp) / "checkpoint.tar"
        pack(directory, archive)
        digest = sha256_file(archive)
        stored = storage.put(ref.key, archive)
    if stored.sha256 != digest:
        storage.delete(ref.key)
        raise CorruptArchiveError(f"{ref.key}: stored archive differs from what was written")
    return stored


def fetch_dir(ref: ArchiveRef) -> Path:
    """A verified local directory with the archive's files (cached by sha256)."""
    if ref.sha256 is None:
        raise ValueError("fetch_dir needs the archive's sha256")
    cache = Path(ref.data_dir).expanduser() / "cache" / "checkpoints" / ref.sha256
    if cache.is_dir():
        return cache
    storage = storage_of(ref)
    with tempfile.TemporaryDirectory(dir=staging_dir(ref.data_dir)) as tmp:
        archive = storage.local_path(ref.key)
        if archive is None:
            archive = Path(tmp) / "checkpoint.tar"
            storage.get(ref.key, archive)
        if sha256_file(archive) != ref.sha256:
            raise CorruptArchiveError(f"{ref.key}: archive sha256 differs from the one recorded at save time")
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            unpack(archive, cache)
        except OSError:
            if not cache.is_dir():  # another rank on this node may have finished it first
                raise
    return cache
