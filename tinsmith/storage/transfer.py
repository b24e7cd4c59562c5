"""Moving checkpoint directories in and out of storage, from whichever process holds them.

A ``StorageSite`` (the storage settings and the data directory) is given to every worker when it
starts; work items carry only an ``ArchiveRef`` naming the object, so credentials never travel
with the work and every node reaches storage directly (no checkpoint bytes pass through the API
server). Downloads land in a cache keyed by the archive's sha256: identical content is fetched
once per node, and a tampered or truncated archive never reaches a worker.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from pydantic import Field

from tinsmith.storage import open_storage
from tinsmith.storage.archive import CorruptArchiveError, pack, sha256_file, unpack
from tinsmith.storage.base import CheckpointStorage
from tinsmith.storage.config import StorageConfig
from tinsmith.types.archives import ArchiveRef, StoredObject
from tinsmith.types.base import InternalModel


class StorageSite(InternalModel):
    """Where a process finds checkpoint storage: the backend's settings and the data directory
    (local backend root, download cache, staging). Built once per worker from the cluster config."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    data_dir: str = Field(description="The server's data directory.")

    def open(self) -> CheckpointStorage:
        """This process's backend for the site (one S3 connection
        pool per site, not per transfer)."""
        return _storage(self.storage.model_dump_json(), self.data_dir)

    def cache_dir(self, sha256: str) -> Path:
        """Where ``fetch_dir`` unpacks the archive with this sha256 on this node."""
        return Path(self.data_dir).expanduser() / "cache" / "checkpoints" / sha256

    def staging(self) -> Path:
        path = Path(self.data_dir).expanduser() / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path


@functools.lru_cache(maxsize=8)
def _storage(config_json: str, data_dir: str) -> CheckpointStorage:
    return open_storage(StorageConfig.model_validate_json(config_json), data_dir)


def upload_dir(site: StorageSite, ref: ArchiveRef, directory: Path) -> StoredObject:
    """Pack ``directory`` and store it under ``ref.key``; the result is verified and complete."""
    storage = site.open()
    with tempfile.TemporaryDirectory(dir=site.staging()) as tmp:
        archive = Path(tmp) / "checkpoint.tar"
        pack(directory, archive)
        digest = sha256_file(archive)
        stored = storage.put(ref.key, archive)
    if stored.sha256 != digest:
        storage.delete(ref.key)
        raise CorruptArchiveError(f"{ref.key}: stored archive differs from what was written")
    return stored


def fetch_dir(site: StorageSite, ref: ArchiveRef) -> Path:
    """A verified local directory with the archive's files (cached by sha256)."""
    if ref.sha256 is None:
        raise ValueError("fetch_dir needs the archive's sha256")
    cache = site.cache_dir(ref.sha256)
    if cache.is_dir():
        return cache
    storage = site.open()
    with tempfile.TemporaryDirectory(dir=site.staging()) as tmp:
        archive = storage.local_path(ref.key)
        if archive is None:
            archive = Path(tmp) / "checkpoint.tar"
            storage.get(ref.key, archive)
        if sha256_file(archive) != ref.sha256:
            raise CorruptArchiveError(
                f"{ref.key}: archive sha256 differs from the one recorded at save time"
            )
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            unpack(archive, cache)
        except OSError:
            if not cache.is_dir():  # another rank on this node may have finished it first
                raise
    return cache
