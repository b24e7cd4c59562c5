"""Checkpoint storage: where checkpoint archives live (a local directory or S3).

``open_storage`` builds the backend a config names; backends import their heavy clients lazily.
"""

from __future__ import annotations

from tinsmith.storage.base import CheckpointStorage, StoredObject
from tinsmith.storage.config import StorageConfig


def open_storage(config: StorageConfig, data_dir: str) -> CheckpointStorage:
    """The backend ``config`` names; a local backend defaults to ``<data_dir>/checkpoints``."""
    if config.backend == "s3":
        from tinsmith.storage.s3 import S3Storage

        return S3Storage(config)
    from tinsmith.storage.local import LocalStorage

    return LocalStorage(config.local_dir or f"{data_dir}/checkpoints")


__all__ = ["CheckpointStorage", "StorageConfig", "StoredObject", "open_storage"]
