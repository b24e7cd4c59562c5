"""The S3 backend (AWS or any S3-compatible server) through boto3.

``put`` relies on S3's own atomicity: an object appears only when its single PUT or its multipart
upload completes, and a failed multipart upload is aborted, so a key never names a partial object.
A writer killed outright can leave an incomplete multipart upload behind (invisible, but billed);
a bucket lifecycle rule that aborts incomplete uploads cleans those up.

boto3 is imported on first use, so importing this module (and every actor that might) stays cheap.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinsmith.errors import ConfigurationError, NotFoundError
from tinsmith.storage.archive import sha256_file
from tinsmith.storage.base import StorageError, StoredObject
from tinsmith.storage.config import StorageConfig

_MB = 1 << 20
# Error codes S3 gives for a bad key id, a bad secret or a bad session token.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    """``CheckpointStorage`` in an S3 bucket, under ``storage.prefix``; picklable into actors."""

    def __init__(self, config: StorageConfig) -> None:
        if not config.bucket:
            raise ConfigurationError("storage.bucket is required for the s3 backend")
        if (config.access_key_id is None) != (config.secret_access_key is None):
            raise ConfigurationError(
                "storage.access_key_id and storage.secret_access_key must be "
                "set together (or both left empty)"
            )
        self.config = config
        self.bucket: str = config.bucket
        self.prefix = config.prefix.strip("/")
        self.region = config.region or "us-east-1"
        self._client_lock = threading.Lock()
        self._client_obj: Any = None

    # The boto3 client holds sockets and a lock: rebuild it after pickling (e.g. into a Ray actor).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        del state["_client_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"S3 bucket {self.bucket!r} (prefix {self.prefix!r}) at {self._endpoint}"

    @property
    def _endpoint(self) -> str:
        return self.config.endpoint_url or f"AWS S3 ({self.region})"

    def _client(self) -> Any:
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(
                    aws_access_key_id=self.config.access_key_id,
                    aws_secret_access_key=self.config.secret_access_key,
                    region_name=self.region,
                )
                self._client_obj = session.client(
                    "s3",
                    endpoint_url=self.config.endpoint_url,
                    config=Config(
                        signature_version="s3v4",
                        s3={"addressing_style": self.config.addressing_style},
                        retries={"mode": "standard"},
                        connect_timeout=10,
                        read_timeout=120,
                    ),
                )
            return self._client_obj

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.config.multipart_threshold_mb * _MB
        # "classic" keeps one code path (s3transfer) whether or not awscrt happens to be installed.
        return TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, preferred_transfer_client="classic"
        )

    def _name(self, key: str) -> str:
        """The object name of ``key``; rejects the same malformed keys as the local backend."""
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """The bucket exists and these credentials may write and delete in it (as
        the local probe file checks), so a read-only key fails at startup rather
        than at the first checkpoint save."""
        client = self._client()
        with self._translated("check of bucket access", None):
            client.head_bucket(Bucket=self.bucket)
        probe = f".probe-{uuid.uuid4().hex[:8]}"
        with self._translated("write probe", probe):
            client.put_object(Bucket=self.bucket, Key=self._name(probe), Body=b"")
            client.delete_object(Bucket=self.bucket, Key=self._name(probe))

    def put(self, key: str, source: Path) -> StoredObject:
        name = self._name(key)
        size = source.stat().st_size
        digest = sha256_file(source)
        client = self._client()
        with self._translated("upload", key):
            # s3transfer aborts the multipart upload when any part
            # fails, so nothing appears at `name`.
            client.upload_file(
                str(source),
                self.bucket,
                name,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=self._transfer_config(),
            )
            stored = int(client.head_object(Bucket=self.bucket, Key=name)["ContentLength"])
        if stored != size:
            self.delete(key)
            raise StorageError(
                f"upload of {key!r} to {self.description} stored {stored} bytes instead of {size}"
            )
        return StoredObject(key=key, size_bytes=size, sha256=digest)

    def get(self, key: str, dest: Path) -> None:
        name = self._name(key)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with self._translated("download", key, missing_ok=False):
                self._client().download_file(
                    self.bucket, name, str(tmp), Config=self._transfer_config()
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def read_object(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """An object anywhere on this endpoint (an image a request points to, under a prefix the
        operator allowed): FileNotFoundError if missing, ValueError if over ``max_bytes``,
        StorageError if unreadable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._client().head_object(Bucket=bucket, Key=key)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise ValueError(f"the object is over {max_bytes} bytes")
            body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
            data: bytes = body.read(max_bytes + 1)
        except (BotoCoreError, ClientError) as exc:
            cause = _unwrap(exc)
            if _error_field(cause, "Code") in _MISSING_KEY_CODES:
                raise FileNotFoundError(key) from None
            raise self._storage_error(cause, "read", key) from None
        if len(data) > max_bytes:
            raise ValueError(f"the object is over {max_bytes} bytes")
        return data

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._translated("delete", key, missing_ok=True):
            self._client().delete_object(Bucket=self.bucket, Key=name)

    def exists(self, key: str) -> bool:
        name = self._name(key)
        with self._translated("existence check", key, missing_ok=True):
            self._client().head_object(Bucket=self.bucket, Key=name)
            return True
        return False

    def list_keys(self, prefix: str) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._translated("listing", prefix):
            pages = (
                self._client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=root + prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name: str = obj["Key"]
                    if not name.endswith(
                        "/"
                    ):  # "folder" markers some consoles create are not objects
                        keys.append(name[len(root) :])
        return sorted(keys)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        name = self._name(key)
        with self._translated("presigning", key):
            url: str = self._client().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires_seconds
            )
        return url

    def local_path(self, key: str) -> Path | None:
        return None

    @contextmanager
    def _translated(
        self, operation: str, key: str | None, missing_ok: bool | None = None
    ) -> Iterator[None]:
        """Turn boto errors into StorageError/NotFoundError; other exceptions pass unchanged.

        ``missing_ok`` says what a missing object means: None, nothing special; False, raise
        NotFoundError; True, swallow the error (the ``with`` body is then cut short).
        """
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            cause = _unwrap(exc)
            if missing_ok is not None and self._is_missing_key(cause):
                if missing_ok:
                    return
                raise NotFoundError(
                    f"checkpoint object {key!r} is not in {self.description}"
                ) from exc
            raise self._storage_error(cause, operation, key) from exc

    def _is_missing_key(self, exc: BaseException) -> bool:
        """A 404 for the object itself; a missing bucket also
        answers 404 and is not "missing key"."""
        if _error_field(exc, "Code") not in _MISSING_KEY_CODES:
            return False
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except Exception:
            return False
        return True

    def _storage_error(self, cause: BaseException, operation: str, key: str | None) -> StorageError:
        """A message that says what the operator must fix, without secrets."""
        from botocore.exceptions import (
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        what = f"{operation} of {key!r}" if key is not None else operation
        code = _error_field(cause, "Code")
        if code in ("NoSuchBucket", "404", "NotFound"):
            return StorageError(f"bucket {self.bucket!r} does not exist at {self._endpoint}")
        if code in _CREDENTIAL_CODES:
            source = (
                "storage.access_key_id/secret_access_key"
                if self.config.access_key_id
                else "the AWS environment"
            )
            status = f"HTTP {code}" if code.isdigit() else code
            return StorageError(
                f"S3 credentials were refused by {self._endpoint} ({status}) during {what} "
                f"in bucket {self.bucket!r}: check the access key and secret from {source}, "
                "and that they may use this bucket"
            )
        if code == "AccessDenied":
            return StorageError(
                f"S3 access denied for {what} in bucket {self.bucket!r} at {self._endpoint}: "
                "the credentials lack permission"
            )
        if code is not None:
            message = _error_field(cause, "Message") or ""
            return StorageError(
                f"S3 {what} in {self.description} failed: {code} {message}".rstrip()
            )
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no S3 credentials for {self.description}: set storage.access_key_id "
                "and storage.secret_access_key, or the AWS environment "
                "(AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
            )
        if isinstance(cause, ConnectionError | HTTPClientError):
            return StorageError(
                f"S3 endpoint {self._endpoint} is unreachable during {what}: {cause}"
            )
        return StorageError(f"S3 {what} in {self.description} failed: {cause}")


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's transfer helpers re-raise ClientErrors as
    message-only wrappers; find the original."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError

    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return _unwrap(exc.last_exception)
    if isinstance(exc, S3UploadFailedError):
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            return _unwrap(inner)
    return exc


def _error_field(exc: BaseException, field: str) -> str | None:
    """A field of a botocore ClientError's error (HEAD responses carry
    only the status as Code: "404")."""
    response = getattr(exc, "response", None)
    value = response.get("Error", {}).get(field) if isinstance(response, dict) else None
    return str(value) if value else None
