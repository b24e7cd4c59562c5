"""Names of stored checkpoint archives, as they travel between the server and the workers.

A reference names an object, never the storage's settings or credentials: each worker opens the
storage from its own settings (``tinsmith.storage.transfer.StorageSite``, given when it starts).
"""

from __future__ import annotations

from pydantic import Field

from tinsmith.types.base import InternalModel


class StoredObject(InternalModel):
    """A stored object. ``sha256`` is of the bytes written: the local backend hashes its copy, S3
    the source file (S3 checks the transfer itself); readers verify it again before use."""

    key: str
    size_bytes: int
    sha256: str


class ArchiveRef(InternalModel):
    """Where one checkpoint archive is (or is to be) stored, in the deployment's storage."""

    key: str
    sha256: str | None = Field(
        default=None, description="Expected archive sha256 (known when reading)."
    )


def safe_name(name: str) -> str:
    """A model id or adapter key as a path segment (':' and other odd characters become '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
