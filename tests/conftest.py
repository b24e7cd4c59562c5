"""Shared fixtures: one real tinsmith server (Ray + DeepSpeed
trainers + vLLM sampler) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.swift_server import SwiftServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ZERO3_MODEL = "tinsmith/SmolLM2-135M-zero3x2"
ONE_BATCH_MODEL = "tinsmith/SmolLM2-135M-onebatch"
S3_BUCKET = "tinsmith-tests"
OTHER_TENANT_KEY = (
    "tml-other-tenant"  # a second tenant on the test servers (configs/test.yaml: auth keys)
)
# Every server the tests start from configs/test.yaml requires API keys: these two tenants'.
os.environ["TINSMITH_API_KEYS"] = f"tests:tml-tests,other:{OTHER_TENANT_KEY}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The trainer-restart tests run first of the session server's tests. A restart re-creates
    every live training client, and by the end of the suite the server holds dozens (each test
    makes its own): the restart then spends most of a minute in peft's adapter injection, which
    is not what those tests show. The second server's tests and the durability tests (which
    start servers of their own) keep running first, so no two servers start together."""
    order = ("second_server", "test_durability.py", "test_trainer_restart.py")

    def rank(item: pytest.Item) -> int:
        parts = item.path.parts
        return next((i for i, name in enumerate(order) if name in parts), len(order))

    items.sort(key=rank)  # stable: the order within each group is kept


@pytest.fixture(scope="session")
def server() -> Iterator[object]:
    """A `tinsmith serve` process with configs/test.yaml on a free
    port; stopped by PID at the end."""
    from tinsmith.cluster.launcher import ServerProcess

    os.environ.setdefault("TINKER_API_KEY", "tml-tests")
    os.environ["HF_HUB_OFFLINE"] = "1"
    proc = ServerProcess(ROOT / "configs" / "test.yaml")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def service_client(server: object) -> object:
    import tinker

    return tinker.ServiceClient(base_url=server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def swift() -> Iterator[SwiftServer]:
    """A real S3-compatible server (OpenStack Swift + s3api) on loopback, with bucket S3_BUCKET."""
    from tests.swift_server import SwiftServer

    with pytest.MonkeyPatch.context() as env, SwiftServer() as server:
        # boto3 and urllib honour HTTP(S)_PROXY; a CI proxy must not see loopback requests.
        for name in ("NO_PROXY", "no_proxy"):
            env.setenv(
                name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"]))
            )
        server.create_bucket(S3_BUCKET)
        yield server
