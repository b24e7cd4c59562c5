"""Shared fixtures: one real tinsmith server (Ray + DeepSpeed trainers + vLLM sampler) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ZERO2_MODEL = "tinsmith/SmolLM2-135M-zero2x2"
ONE_BATCH_MODEL = "tinsmith/SmolLM2-135M-onebatch"


@pytest.fixture(scope="session")
def server() -> Iterator[object]:
    """A `tinsmith serve` process with configs/test.yaml on a free port; stopped by PID at the end."""
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
