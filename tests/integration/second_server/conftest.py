"""The second server of the integration suite, shared by the modules of this package: the tiny
random-weight models of configs/models.yaml (Qwen3 with two vLLM sampler replicas, Qwen3-MoE,
Qwen3-VL), and checkpoints in S3 (the session's Swift server). The replica, restart and S3
promises hold for any model, and tiny ones start and restart fastest; models.yaml's Llama
(SmolLM2) is the session server's default model. The server lives as long as this package's
tests run (then stops, so that no more than two servers share CI's memory), and checks at the
end that stopping it stopped every worker the coordinator started in place of killed ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker
import yaml

from tests.conftest import ROOT, S3_BUCKET
from tests.integration.helpers import TINY_MODEL
from tests.swift_server import SwiftServer

# Workers the coordinator started in place of dead ones (pid -> what): stopping the server must
# stop them too, although the handles the server started with are the dead ones'.
REPLACEMENTS: dict[int, str] = {}


def s3_config(swift: SwiftServer, path: Path, replicas: int = 1, **storage: object) -> Path:
    """configs/test.yaml's default model (one trainer rank) with ``replicas`` sampler replicas,
    storing checkpoints under the prefix ``e2e-<path stem>`` of the test bucket."""
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["models"] = raw["models"][:1]
    raw["sampler"]["num_replicas"] = replicas
    raw["storage"] = {
        "backend": "s3",
        "bucket": S3_BUCKET,
        "prefix": f"e2e-{path.stem}",
        "endpoint_url": swift.endpoint_url,
        "access_key_id": swift.access_key,
        "secret_access_key": swift.secret_key,
        "multipart_threshold_mb": 5,
        **storage,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def running(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie awaiting its reaper has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _assert_stopped(pids: dict[int, str]) -> None:
    deadline = time.monotonic() + 30
    while (left := {p: w for p, w in pids.items() if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running after the server stopped: {left}"


# The model this package's replica, restart and S3 tests train and sample.
MODEL = TINY_MODEL


# Where the server reads the images an ImageAssetPointerChunk names (besides the assets_dir).
ASSETS_S3_PREFIX = f"s3://{S3_BUCKET}/assets/"


def models_config(swift: SwiftServer, path: Path, assets_dir: Path) -> Path:
    """configs/models.yaml's tiny models (MODEL with two sampler replicas) on configs/test.yaml's
    settings, with checkpoints in S3, and images read from ``assets_dir`` and ASSETS_S3_PREFIX."""
    s3_config(swift, path, replicas=1)
    raw = yaml.safe_load(path.read_text())
    models = yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())["models"]
    raw["models"] = [m for m in models if m["source"].startswith("random:")]
    first = next(m for m in raw["models"] if m["name"] == MODEL)
    first["sampler"] = {**raw["sampler"], "num_replicas": 2}
    raw["images"] = {"assets_dir": str(assets_dir), "s3_prefixes": [ASSETS_S3_PREFIX]}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="package")
def assets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second server's images.assets_dir."""
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="package")
def second_server(
    swift: SwiftServer, assets_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """`tinsmith serve` on S3 with the tiny models, MODEL with two sampler replicas; stopped
    (by PID) after this package."""
    from tinsmith.cluster.launcher import ServerProcess

    config = models_config(swift, tmp_path_factory.mktemp("s3") / "s3.yaml", assets_dir)
    with ServerProcess(config) as proc:
        yield proc
    _assert_stopped(REPLACEMENTS)


@pytest.fixture(scope="package")
def second_client(second_server: object) -> tinker.ServiceClient:
    """The official SDK's ServiceClient on the second server."""
    return tinker.ServiceClient(base_url=second_server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
