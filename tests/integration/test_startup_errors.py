"""`tinsmith serve` refuses a bad config at start-up, before any client can connect, with a
message that names the problem (the S3 cases are in second_server/test_checkpoints_s3.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tinsmith.cluster.launcher import free_port

pytestmark = pytest.mark.integration


def _serve(
    config: dict[str, object], tmp_path: Path, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, TINSMITH_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    env["TINSMITH_RAY_TEMP_DIR"] = str(Path("/tmp") / f"tsr-bad-{os.getpid()}")
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "tinsmith.cluster.cli",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port or free_port()),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)


def _local() -> dict[str, object]:
    return yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())  # type: ignore[no-any-return]


def test_unknown_field_is_named(tmp_path: Path) -> None:
    config = _local()
    config["trainer"]["num_rank"] = 2  # type: ignore[index]
    done = _serve(config, tmp_path)
    assert done.returncode == 2 and "trainer.num_rank" in done.stderr, done.stderr[-2000:]


def test_impossible_placement_is_named(tmp_path: Path) -> None:
    config = _local()
    config["trainer"]["num_gpus_per_rank"] = 1  # type: ignore[index]
    done = _serve(config, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "impossible placement" in done.stderr and "GPU" in done.stderr, done.stderr[-2000:]


def test_a_taken_port_is_named_before_start_up(tmp_path: Path) -> None:
    """The API's port is bound first thing: a taken one fails in seconds (no Ray, no models),
    not after the workers have started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = _serve(_local(), tmp_path, port=port)
        took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "Ray instance" not in done.stderr, done.stderr[-2000:]  # it never got that far
    print(f"refused in {took:.1f} s")
