"""Server-side checkpoint bookkeeping: names, storage keys, records, expiry, download URLs.

Order of visibility: a checkpoint's archive is written and verified in storage first, and only
then recorded in the metadata store, which is what every listing and load reads. A save that
dies midway therefore leaves at most an unreferenced object (never a listed checkpoint), and a
delete removes the record before the object. Objects are never rewritten in place: every save
gets a fresh key, so a reader never sees an archive change under it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.errors import ConfigurationError, ConflictError, NotFoundError, UserInputError
from tinsmith.storage.base import CheckpointStorage
from tinsmith.storage.config import StorageConfig
from tinsmith.storage.transfer import StorageSite
from tinsmith.store.base import MetadataStore
from tinsmith.store.records import CheckpointRecord, RunRecord, utcnow
from tinsmith.types.archives import ArchiveRef, safe_name
from tinsmith.types.checkpoints import CheckpointType, ParsedCheckpointTinkerPath

if TYPE_CHECKING:
    from tinsmith.cluster.images import ObjectReader

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_TTL_SECONDS = 100 * 365 * 86400
KIND_BY_TYPE: dict[CheckpointType, str] = {
    "training": "weights",
    "sampler": "sampler_weights",
    "external": "external_weights",
}


def check_name(name: str | None, field: str = "path") -> str:
    """A save's checkpoint name, refused unless it is safe in a tinker path and a storage key."""
    if name is None or not NAME_RE.match(name) or name in (".", ".."):
        raise UserInputError(
            f"{field} {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    return name


def parse_tinker_path(path: str, field: str = "path") -> ParsedCheckpointTinkerPath:
    """Parse a ``tinker://`` path from a request; a malformed one is the caller's error (400)."""
    try:
        return ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError as exc:
        raise UserInputError(f"{field}: {exc}") from exc


class CheckpointService:
    """Every checkpoint the server keeps: its archive in storage, its record, expiry and download
    links. The checkpoint routes and the models' saves and loads all go through here."""

    def __init__(
        self,
        store: MetadataStore,
        storage: CheckpointStorage,
        storage_config: StorageConfig,
        data_dir: Path,
        url_secret: bytes,
    ) -> None:
        self.store = store
        self.storage = storage
        self.site = StorageSite(storage=storage_config, data_dir=str(data_dir))
        self._secret = url_secret
        self._reserved: set[str] = set()

    def storage_reader(self) -> ObjectReader | None:
        """The S3 backend, which also reads images requests point to; None for local storage."""
        from tinsmith.storage.s3 import S3Storage

        return self.storage if isinstance(self.storage, S3Storage) else None

    @property
    def storage_config(self) -> StorageConfig:
        """The backend's settings (those the workers were given, in ``site``)."""
        return self.site.storage

    # ----- writing ---------------------------------------------------------------------------
    def new_ref(self, run_id: str, kind: str, name: str) -> ArchiveRef:
        key = f"{safe_name(run_id)}/{kind}/{name}-{uuid.uuid4().hex[:12]}.tar"
        return ArchiveRef(key=key)

    def ref_of(self, record: CheckpointRecord) -> ArchiveRef:
        return ArchiveRef(key=record.storage_key, sha256=record.sha256)

    def reserve(self, tinker_path: str, overwrite: bool) -> Callable[[], None]:
        """Hold a path while its archive is written; returns the release function. Refuses a
        second concurrent save to the path, and (without ``overwrite``) a path that exists."""
        if tinker_path in self._reserved:
            raise UserInputError(f"checkpoint {tinker_path!r} is being written by another request")
        if not overwrite and self.get(tinker_path) is not None:
            raise UserInputError(
                f"checkpoint {tinker_path!r} already exists; pass "
                "overwrite=True or choose another name"
            )
        self._reserved.add(tinker_path)
        return lambda: self._reserved.discard(tinker_path)

    def commit(self, record: CheckpointRecord, overwrite: bool) -> None:
        """Make a fully written checkpoint visible; an overwritten one's old archive is removed."""
        old = self.store.get_checkpoint(record.tinker_path)
        try:
            self.store.add_checkpoint(record, replace=overwrite)
        except ConflictError as exc:
            self.storage.delete(record.storage_key)
            raise UserInputError(str(exc)) from exc
        if old is not None and old.storage_key != record.storage_key:
            self._delete_object(old.storage_key)

    # ----- reading ---------------------------------------------------------------------------
    def get(self, tinker_path: str) -> CheckpointRecord | None:
        """The live record of ``tinker_path``; an expired one is gone to readers at once (the
        background reaper deletes it, off the request path)."""
        record = self.store.get_checkpoint(tinker_path)
        if record is not None and record.expires_at is not None and record.expires_at <= utcnow():
            return None
        return record

    def resolve(self, tinker_path: str, field: str = "path") -> CheckpointRecord:
        parse_tinker_path(tinker_path, field)
        record = self.get(tinker_path)
        if record is None:
            raise NotFoundError(f"{field}: checkpoint {tinker_path!r} does not exist")
        return record

    def list(
        self, run_id: str | None, owner: str | None, limit: int, offset: int
    ) -> tuple[list[CheckpointRecord], int]:
        """Live checkpoints (expired ones are left out; the background reaper deletes them)."""
        return self.store.list_checkpoints(run_id, owner, limit, offset, live_at=utcnow())

    # ----- changing --------------------------------------------------------------------------
    def delete(self, record: CheckpointRecord) -> None:
        """Delete this version of a checkpoint: its record (unless a later save replaced it: the
        TTL reaper may hold a record read before that save) and its archive."""
        self.store.delete_checkpoint(record.tinker_path, record.storage_key)
        self._delete_object(record.storage_key)
        # Files unpacked here for download links go too (unless a live record has that content).
        if not self.store.has_checkpoint_content(record.sha256):
            shutil.rmtree(self.site.cache_dir(record.sha256), ignore_errors=True)

    def _delete_object(self, key: str) -> None:
        """Delete an archive no record names any more (a copy shares its source's)."""
        if self.store.storage_key_in_use(key):
            return
        try:
            self.storage.delete(key)
        except Exception:  # the record is gone; an orphaned object only costs space
            log.exception("could not delete checkpoint object %s", key)

    def copy(self, source: CheckpointRecord, run: RunRecord, ttl_seconds: int | None) -> str:
        """Record a copy of ``source`` under ``run`` (same kind and name, the caller's, private)
        that shares its archive: no bytes are written, and the archive stays while either
        record names it. Returns the copy's path; an existing copy there is kept."""
        path = f"tinker://{run.training_run_id}/{source.checkpoint_id}"  # '<kind>/<name>'
        existing = self.store.get_checkpoint(path)
        if existing is not None:
            if existing.storage_key != source.storage_key:
                raise UserInputError(f"checkpoint {path!r} already exists")
            return path  # a retried copy
        record = source.model_copy(
            update={
                "training_run_id": run.training_run_id,
                "tinker_path": path,
                "owner": run.owner,
                "created_at": utcnow(),
                "expires_at": expiry(ttl_seconds),
                "public": False,
            }
        )
        self.store.put_run(run)
        self.store.add_checkpoint(record, replace=False)
        return path

    def set_public(self, record: CheckpointRecord, public: bool) -> None:
        self.store.update_checkpoint(record.model_copy(update={"public": public}))

    def set_ttl(self, record: CheckpointRecord, ttl_seconds: int | None) -> None:
        self.store.update_checkpoint(record.model_copy(update={"expires_at": expiry(ttl_seconds)}))

    def reap(self) -> int:
        """Delete every expired checkpoint (record, then archive); returns how many."""
        expired = self.store.expired_checkpoints(utcnow())
        for record in expired:
            self.delete(record)
        if expired:
            log.info("deleted %d expired checkpoints", len(expired))
        return len(expired)

    # ----- download URLs ---------------------------------------------------------------------
    def sign(
        self, record: CheckpointRecord, filename: str | None, expires: dt.datetime, tenant: str
    ) -> str:
        """A token for ``/api/v1/tinsmith/files/<token>``: names one archive (or one file in it),
        an expiry and the tenant it was made for, signed with the server's secret; the holder
        needs no API key, but the link works only while that tenant may still read the
        checkpoint (unpublishing one stops other tenants' links at once)."""
        body = {
            "p": record.tinker_path,
            "k": record.storage_key,
            "f": filename,
            "e": int(expires.timestamp()),
            "t": tenant,
        }
        raw = json.dumps(body, separators=(",", ":")).encode()
        mac = hmac.new(self._secret, raw, hashlib.sha256).digest()
        return (
            base64.urlsafe_b64encode(raw).decode().rstrip("=")
            + "."
            + base64.urlsafe_b64encode(mac).decode().rstrip("=")
        )

    def derived_secret(self, purpose: str) -> bytes:
        """The server's secret (the data directory's ``url-signing.key``) derived for another
        use, e.g. signing JWTs: one secret to keep, none shared between uses."""
        return hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()

    def download_link(
        self, record: CheckpointRecord, tenant: str, base_url: str
    ) -> tuple[str, dt.datetime]:
        """A one-file download of the whole archive and when it expires: a presigned S3 URL,
        or a signed link this server answers (``base_url``: the server as the caller sees it)."""
        seconds = self.storage_config.url_expiry_seconds
        expires = utcnow() + dt.timedelta(seconds=seconds)
        url = self.storage.download_url(record.storage_key, seconds)
        if url is None:
            token = self.sign(record, None, expires, tenant)
            url = f"{base_url.rstrip('/')}/api/v1/tinsmith/files/{token}"
        return url, expires

    def verify(self, token: str) -> tuple[CheckpointRecord, str | None]:
        """The checkpoint and file a token names; NotFoundError for
        any bad, expired or stale token."""
        try:
            raw_b64, mac_b64 = token.split(".")
            raw = base64.urlsafe_b64decode(raw_b64 + "=" * (-len(raw_b64) % 4))
            mac = base64.urlsafe_b64decode(mac_b64 + "=" * (-len(mac_b64) % 4))
            body = json.loads(raw)
        except ValueError as exc:
            raise NotFoundError("download link is malformed") from exc
        if not hmac.compare_digest(mac, hmac.new(self._secret, raw, hashlib.sha256).digest()):
            raise NotFoundError("download link signature is invalid")
        if body["e"] < utcnow().timestamp():
            raise NotFoundError("download link has expired")
        record = self.get(str(body["p"]))
        if record is None or record.storage_key != body["k"]:
            raise NotFoundError("the checkpoint of this download link no longer exists")
        if record.owner != body.get("t") and not record.public:
            raise NotFoundError("the checkpoint of this download link is no longer readable")
        filename = body["f"]
        return record, str(filename) if filename is not None else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def expiry(ttl_seconds: int | None) -> dt.datetime | None:
    """When a checkpoint with this TTL expires (``None``: never); refuses TTLs out of range."""
    if ttl_seconds is None:
        return None
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise UserInputError(
            f"ttl_seconds must be in 1..{MAX_TTL_SECONDS} (or null for "
            f"no expiry), got {ttl_seconds}"
        )
    return utcnow() + dt.timedelta(seconds=ttl_seconds)


URL_SECRET_BYTES = 32


def load_url_secret(data_dir: Path) -> bytes:
    """The key that signs download links, kept in the data directory so links survive restarts.
    Written whole or not at all (a temporary file, fsynced, then linked into place), and refused
    unless it is exactly ``URL_SECRET_BYTES`` long: an empty key would let anyone forge links."""
    from tinsmith.storage.local import fsync_dir

    path = data_dir / "url-signing.key"
    if not path.exists():
        tmp = data_dir / f".url-signing.key.{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(URL_SECRET_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # fails if another process made one first: keep theirs
            except FileExistsError:
                pass
            fsync_dir(data_dir)
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) != URL_SECRET_BYTES:
        raise ConfigurationError(
            f"{path.name} in the data directory holds {len(secret)} bytes, not "
            f"{URL_SECRET_BYTES}: delete it to make a new one (download links made with the old "
            "one stop working)"
        )
    return secret


def open_checkpoint_service(storage_config: StorageConfig, data_dir: Path) -> CheckpointService:
    """Storage (checked: fails fast on a bad bucket or credentials) plus the SQLite store."""
    from tinsmith.storage import open_storage
    from tinsmith.store.sqlite import SQLiteStore

    data_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_config, str(data_dir))
    storage.check()
    log.info("checkpoints go to %s", storage.description)
    store = SQLiteStore(data_dir / "tinsmith.db")
    return CheckpointService(store, storage, storage_config, data_dir, load_url_secret(data_dir))
