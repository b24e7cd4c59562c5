"""Checkpoint archives: one uncompressed tar per checkpoint, with a manifest of sha256 sums.

The manifest is the first member, so a reader can check every file while extracting; an archive
whose files do not match it is refused whole (never half-extracted into a live directory).
Safetensors do not compress, so the tar is not compressed: packing costs one sequential copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

from pydantic import Field

from tinsmith.errors import TinsmithError
from tinsmith.types.base import InternalModel

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "tinsmith-checkpoint-v1"
_CHUNK = 4 << 20


class CorruptArchiveError(TinsmithError, ValueError):
    """An archive does not match its manifest (truncated, tampered or not a checkpoint)."""


class ArchiveEntry(InternalModel):
    """One file of a checkpoint: its path inside the archive, its size and its sha256."""

    path: str
    size_bytes: int
    sha256: str


class ArchiveManifest(InternalModel):
    """The archive's first member: every file it holds, checked before anything is extracted."""

    format: str = FORMAT
    files: list[ArchiveEntry] = Field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks: archives and weights can be gigabytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack(source_dir: Path, dest: Path) -> ArchiveManifest:
    """Write every regular file under ``source_dir`` into the tar ``dest``, manifest first."""
    files = sorted(p for p in source_dir.rglob("*") if p.is_file())
    manifest = ArchiveManifest(
        files=[
            ArchiveEntry(
                path=p.relative_to(source_dir).as_posix(),
                size_bytes=p.stat().st_size,
                sha256=sha256_file(p),
            )
            for p in files
        ]
    )
    body = manifest.model_dump_json(indent=1).encode()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for path, entry in zip(files, manifest.files, strict=True):
            tar.add(path, arcname=entry.path, recursive=False)
    return manifest


def unpack(archive: Path, dest_dir: Path) -> ArchiveManifest:
    """Extract ``archive`` into ``dest_dir`` after checking every file against the manifest.

    Extraction goes to a sibling temporary directory that is renamed to ``dest_dir`` (which must
    not exist) only when all files are verified.
    """
    tmp = dest_dir.with_name(f".{dest_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with tarfile.open(archive, "r") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME:
                raise CorruptArchiveError(
                    f"{archive.name}: no {MANIFEST_NAME} at the start; not a checkpoint archive"
                )
            handle = tar.extractfile(first)
            assert handle is not None
            try:
                manifest = ArchiveManifest.model_validate(json.loads(handle.read()))
            except ValueError as exc:
                raise CorruptArchiveError(f"{archive.name}: unreadable manifest: {exc}") from exc
            tmp.mkdir(parents=True)
            tar.extractall(tmp, filter="data")
        (tmp / MANIFEST_NAME).unlink(missing_ok=True)
        _verify(tmp, manifest, archive.name)
        os.replace(tmp, dest_dir)  # fails (OSError) rather than clobber a directory already there
        return manifest
    except tarfile.TarError as exc:
        raise CorruptArchiveError(f"{archive.name}: not a readable tar archive: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _verify(directory: Path, manifest: ArchiveManifest, label: str) -> None:
    listed = {f.path for f in manifest.files}
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    if present != listed:
        missing, extra = sorted(listed - present), sorted(present - listed)
        raise CorruptArchiveError(
            f"{label}: files differ from the manifest (missing {missing}, unlisted {extra})"
        )
    for entry in manifest.files:
        path = directory / entry.path
        if path.stat().st_size != entry.size_bytes or sha256_file(path) != entry.sha256:
            raise CorruptArchiveError(
                f"{label}: {entry.path} does not match its sha256 in the manifest"
            )
