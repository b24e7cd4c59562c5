"""The storage interface every backend implements.

Keys are '/'-separated relative names (``<run>/<kind>/<name>.tar``). ``put`` is atomic: a key
is either absent or holds a complete object, so a writer killed midway leaves nothing that looks
whole. Backends raise ``NotFoundError`` for a missing key (never for a missing bucket) and
``StorageError`` for everything the operator must fix (credentials, bucket, permissions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tinsmith.errors import TinsmithError
from tinsmith.types.archives import StoredObject

__all__ = ["CheckpointStorage", "StorageError", "StoredObject"]


class StorageError(TinsmithError, RuntimeError):
    """The storage backend refused or failed an operation; the message says which and why."""


class CheckpointStorage(Protocol):
    """A flat key -> file store for checkpoint archives."""

    @property
    def description(self) -> str:
        """Where objects go, for logs and error messages (no secrets)."""
        ...

    def check(self) -> None:
        """Fail fast with a StorageError if the backend is unusable: it writes and deletes a probe
        object, so a missing bucket, bad credentials and read-only access all fail at start-up."""
        ...

    def put(self, key: str, source: Path) -> StoredObject:
        """Store the file ``source`` under ``key`` atomically, replacing any object there."""
        ...

    def get(self, key: str, dest: Path) -> None:
        """Write the object ``key`` to the file ``dest`` (replaced atomically)."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""
        ...

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        """A URL anyone holding it can GET the object from (presigned), or None when the backend
        has none and the API server must serve the bytes itself."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's file on this machine, if the backend keeps one (local backend)."""
        ...
