"""Both checkpoint storage backends against the same contract: a local directory, and S3 through a
real S3-compatible server (Swift + s3api), which checks signatures the way AWS does."""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3_BUCKET as BUCKET
from tests.swift_server import SwiftServer
from tinsmith.errors import NotFoundError
from tinsmith.storage.archive import CorruptArchiveError, pack, sha256_file, unpack
from tinsmith.storage.base import CheckpointStorage, StorageError
from tinsmith.storage.config import StorageConfig
from tinsmith.storage.local import LocalStorage
from tinsmith.storage.s3 import S3Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MB = 1 << 20


def s3_config(server: SwiftServer, **overrides: Any) -> StorageConfig:
    """A config for ``server`` with a fresh prefix, so tests never see each other's objects."""
    values: dict[str, Any] = {
        "backend": "s3",
        "bucket": BUCKET,
        "prefix": f"tests/{uuid.uuid4().hex[:8]}",
        "endpoint_url": server.endpoint_url,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "multipart_threshold_mb": 5,
    }
    return StorageConfig(**(values | overrides))


@pytest.fixture
def s3(swift: SwiftServer) -> S3Storage:
    return S3Storage(s3_config(swift))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return S3Storage(s3_config(request.getfixturevalue("swift")))


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def checkpoint_dir(path: Path) -> Path:
    (path / "optimizer").mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(3 * MB))
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "optimizer" / "state.pt").write_bytes(os.urandom(100_000))
    return path


def s3_head(storage: S3Storage, key: str) -> dict[str, Any]:
    head: dict[str, Any] = storage._client().head_object(
        Bucket=storage.bucket, Key=storage._name(key)
    )
    return head


# --- both backends ---------------------------------------------------------------------------


def test_large_round_trip(storage: CheckpointStorage, tmp_path: Path) -> None:
    source = random_file(tmp_path / "big.tar", 12 * MB + 12345)
    stored = storage.put("run-1/weights/big.tar", source)
    assert stored.key == "run-1/weights/big.tar"
    assert stored.size_bytes == source.stat().st_size
    assert stored.sha256 == sha256_file(source)
    if isinstance(storage, S3Storage):  # 5 MB parts: a multipart object's ETag ends in "-<parts>"
        assert s3_head(storage, "run-1/weights/big.tar")["ETag"].strip('"').endswith("-3")

    dest = tmp_path / "out" / "big.tar"
    dest.parent.mkdir()
    dest.write_bytes(b"stale")  # replaced, not appended to
    storage.get("run-1/weights/big.tar", dest)
    assert sha256_file(dest) == stored.sha256
    assert [p.name for p in dest.parent.iterdir()] == ["big.tar"]  # no temporary file left


def test_list_exists_delete(storage: CheckpointStorage, tmp_path: Path) -> None:
    storage.check()
    assert storage.list_keys("") == []  # the check's probe object is gone
    small = random_file(tmp_path / "small", 1000)
    keys = ["run-1/weights/a.tar", "run-1/sampler_weights/b.tar", "run-2/weights/c.tar"]
    for key in keys:
        storage.put(key, small)

    assert storage.list_keys("run-1/") == ["run-1/sampler_weights/b.tar", "run-1/weights/a.tar"]
    assert storage.list_keys("run-") == sorted(keys)
    assert storage.list_keys("") == sorted(keys)
    assert storage.list_keys("run-3/") == []
    assert storage.exists("run-2/weights/c.tar")
    assert not storage.exists("run-2/weights/missing.tar")

    storage.delete("run-2/weights/c.tar")
    storage.delete("run-2/weights/c.tar")  # idempotent
    storage.delete("never/was/here.tar")
    assert not storage.exists("run-2/weights/c.tar")
    assert storage.list_keys("run-2/") == []
    with pytest.raises(ValueError):
        storage.exists("run-1/../escape.tar")


def test_get_missing_key(storage: CheckpointStorage, tmp_path: Path) -> None:
    dest = tmp_path / "dest.tar"
    with pytest.raises(NotFoundError):
        storage.get("run-9/weights/nothing.tar", dest)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    assert storage.local_path("run-9/weights/nothing.tar") is None


def test_archive_round_trip(storage: CheckpointStorage, tmp_path: Path) -> None:
    source = checkpoint_dir(tmp_path / "ckpt")
    archive = tmp_path / "ckpt.tar"
    manifest = pack(source, archive)
    stored = storage.put("run-1/weights/step-10.tar", archive)
    assert stored.sha256 == sha256_file(archive)

    fetched = tmp_path / "fetched.tar"
    storage.get("run-1/weights/step-10.tar", fetched)
    out = tmp_path / "restored"
    assert unpack(fetched, out) == manifest
    for entry in manifest.files:
        assert (out / entry.path).read_bytes() == (source / entry.path).read_bytes()


def test_tampered_archive_is_rejected(storage: CheckpointStorage, tmp_path: Path) -> None:
    archive = tmp_path / "ckpt.tar"
    pack(checkpoint_dir(tmp_path / "ckpt"), archive)
    with tarfile.open(archive) as tar:
        member = tar.getmember("adapter_model.safetensors")
    with archive.open(
        "r+b"
    ) as f:  # flip one byte inside the file's data; the tar itself stays valid
        f.seek(member.offset_data + 1000)
        byte = f.read(1)[0]
        f.seek(member.offset_data + 1000)
        f.write(bytes([byte ^ 0xFF]))

    storage.put("run-1/weights/tampered.tar", archive)
    fetched = tmp_path / "fetched.tar"
    storage.get("run-1/weights/tampered.tar", fetched)
    out = tmp_path / "restored"
    with pytest.raises(CorruptArchiveError, match=r"adapter_model\.safetensors does not match"):
        unpack(fetched, out)
    assert not out.exists()


# --- S3 only ---------------------------------------------------------------------------------


def test_s3_presigned_url(s3: S3Storage, tmp_path: Path) -> None:
    source = random_file(tmp_path / "obj.tar", 200_000)
    s3.put("run-1/weights/obj.tar", source)
    url = s3.download_url("run-1/weights/obj.tar", 300)
    assert url is not None and s3.local_path("run-1/weights/obj.tar") is None
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == sha256_file(source)

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    signature = query["X-Amz-Signature"][0]
    query["X-Amz-Signature"] = [signature[:-1] + ("0" if signature[-1] != "0" else "1")]
    tampered = parts._replace(query=urllib.parse.urlencode(query, doseq=True)).geturl()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=30)
    assert refused.value.code == 403
    refused.value.close()


def test_s3_wrong_secret(swift: SwiftServer, tmp_path: Path) -> None:
    storage = S3Storage(s3_config(swift, secret_access_key="not-the-secret"))
    with pytest.raises(StorageError, match="credentials were refused") as info:
        storage.check()
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StorageError, match="credentials were refused") as info:
        storage.put("run-1/weights/x.tar", random_file(tmp_path / "x.tar", 1000))
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StorageError, match="credentials were refused"):
        storage.put(
            "run-1/weights/big.tar", random_file(tmp_path / "big.tar", 6 * MB)
        )  # multipart path


def test_s3_missing_bucket(swift: SwiftServer, tmp_path: Path) -> None:
    storage = S3Storage(s3_config(swift, bucket="no-such-bucket"))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.check()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.put("run-1/weights/x.tar", random_file(tmp_path / "x.tar", 1000))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.get(
            "run-1/weights/x.tar", tmp_path / "out.tar"
        )  # not NotFoundError: the operator must act
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.list_keys("")


def test_s3_unreachable_endpoint(swift: SwiftServer) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = S3Storage(s3_config(swift, endpoint_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(StorageError, match="unreachable"):
        storage.check()


def test_s3_interrupted_multipart_upload_leaves_nothing(s3: S3Storage, tmp_path: Path) -> None:
    key = "run-1/weights/interrupted.tar"
    original = random_file(tmp_path / "v1.tar", 1000)
    s3.put(key, original)
    replacement = random_file(tmp_path / "v2.tar", 12 * MB)  # three 5 MB parts
    events = s3._client().meta.events

    def interrupted_put(target: str) -> int:
        """put() whose source "fails to read" after the first part;
        returns how many parts were tried."""
        calls = itertools.count(1)  # next() is atomic: parts are uploaded from several threads

        def fail_after_first_part(**_: Any) -> None:
            if next(calls) > 1:
                raise OSError("simulated read failure of the source file")

        events.register("before-call.s3.UploadPart", fail_after_first_part)
        try:
            with pytest.raises(OSError, match="simulated read failure"):
                s3.put(target, replacement)
        finally:
            events.unregister("before-call.s3.UploadPart", fail_after_first_part)
        return next(calls) - 1

    assert interrupted_put(key) >= 2
    # The key still names the complete old object, and the failed upload was aborted.
    fetched = tmp_path / "fetched.tar"
    s3.get(key, fetched)
    assert sha256_file(fetched) == sha256_file(original)
    uploads = s3._client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{s3.prefix}/run-1/")
    assert uploads.get("Uploads", []) == []

    # A fresh key interrupted the same way is simply absent.
    assert interrupted_put("run-1/weights/fresh.tar") >= 2
    assert not s3.exists("run-1/weights/fresh.tar")
    assert s3.list_keys("run-1/") == [key]
    assert (
        s3._client()
        .list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{s3.prefix}/run-1/")
        .get("Uploads", [])
        == []
    )

    # And the next put works.
    stored = s3.put(key, replacement)
    s3.get(key, fetched)
    assert sha256_file(fetched) == stored.sha256 == sha256_file(replacement)


def test_s3_storage_pickles(s3: S3Storage, tmp_path: Path) -> None:
    s3.put("run-1/weights/p.tar", random_file(tmp_path / "p.tar", 10))
    clone = pickle.loads(pickle.dumps(s3))
    assert clone.exists("run-1/weights/p.tar")
    assert (
        "secret" not in clone.description and s3.config.secret_access_key not in clone.description
    )
