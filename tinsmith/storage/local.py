"""The local-directory backend (the default): archives are files under one root directory.

Writes go to a temporary file in the same directory and are renamed into place after an fsync,
so a key never names a partial file; the directory is fsynced after the rename, so an archive
whose checkpoint was acknowledged is still there after a power loss. On a multi-node cluster the
root must be a shared mount.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from tinsmith.errors import NotFoundError
from tinsmith.storage.archive import sha256_file
from tinsmith.storage.base import StorageError, StoredObject


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX: the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """``CheckpointStorage`` in a local (or shared, mounted) directory; a key is a relative path."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @property
    def description(self) -> str:
        return f"local directory {self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"checkpoint directory {self.root} is not writable: {exc}") from exc

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, source: Path) -> StoredObject:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with source.open("rb") as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 4 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredObject(key=key, size_bytes=dest.stat().st_size, sha256=sha256_file(dest))

    def get(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"checkpoint object {key!r} is not in {self.description}")
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        keys = (
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.endswith(".partial")
        )
        return sorted(k for k in keys if k.startswith(prefix))

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None
