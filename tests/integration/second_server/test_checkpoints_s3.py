"""Checkpoints in S3 (a real Swift + s3api server on loopback), on the package's second server:
resume and sampling through S3, an upload cut off midway, and a server that refuses to start on
bad credentials or a missing bucket."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker
from tinker import types

from tests.conftest import S3_BUCKET
from tests.integration.helpers import checkpoint_dir, datum, random_tokens, read_adapter
from tests.integration.second_server.conftest import MODEL, s3_config
from tests.swift_server import SwiftServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _step(tc: tinker.TrainingClient, seed: int) -> float:
    out = tc.forward_backward([datum(random_tokens(seed, 20))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=2e-3, weight_decay=0.01)).result()
    return float(out.metrics["loss:sum"])


def _s3_client(swift: SwiftServer) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=swift.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=swift.access_key,
        aws_secret_access_key=swift.secret_key,
    )


def _s3_keys(swift: SwiftServer, prefix: str) -> list[str]:
    pages = (
        _s3_client(swift).get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_resume_and_sampling_through_s3(
    second_client: tinker.ServiceClient, second_server: object, swift: SwiftServer
) -> None:
    tc = second_client.create_lora_training_client(base_model=MODEL, rank=8).result()
    for i in range(2):
        _step(tc, 4000 + i)
    path = tc.save_state("s3-resume").result().path
    keys = _s3_keys(swift, "e2e-s3/")
    assert any("/weights/s3-resume-" in k and k.endswith(".tar") for k in keys), keys

    resumed = second_client.create_training_client_from_state_with_optimizer(path).result()
    assert _step(resumed, 4100) == pytest.approx(_step(tc, 4100), rel=1e-6)
    # The archive URL of an S3 checkpoint is presigned: this download goes straight to S3.
    a = read_adapter(
        checkpoint_dir(second_server, tc.save_weights_for_sampler("s3-a").result().path)
    )
    b = read_adapter(
        checkpoint_dir(second_server, resumed.save_weights_for_sampler("s3-b").result().path)
    )
    for key, value in a.items():
        np.testing.assert_allclose(b[key], value, rtol=0, atol=1e-6, err_msg=key)

    prompt = types.ModelInput.from_ints(random_tokens(4200, 8))
    greedy = types.SamplingParams(max_tokens=6, temperature=0.0)
    from_s3 = second_client.create_sampling_client(
        model_path=f"tinker://{tc.model_id}/sampler_weights/s3-a"
    ).result()
    in_memory = tc.save_weights_and_get_sampling_client().result()
    got = from_s3.sample(prompt, 1, greedy).result().sequences[0].tokens
    assert got == in_memory.sample(prompt, 1, greedy).result().sequences[0].tokens


def test_upload_cut_off_leaves_no_checkpoint(
    second_client: tinker.ServiceClient, second_server: object, swift: SwiftServer
) -> None:
    """The S3 proxy is SIGKILLed while the checkpoint's multipart upload is in flight."""
    tc = second_client.create_lora_training_client(base_model=MODEL, rank=32).result()
    _step(tc, 4300)
    rest = tinker.RestClient(base_url=second_server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    client = _s3_client(swift)
    killed = threading.Event()

    def kill_when_uploading() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=S3_BUCKET).get("Uploads", [])
            if any("/cut-off-" in u["Key"] for u in uploads):
                swift.kill("proxy")
                killed.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_when_uploading, daemon=True)
    watcher.start()
    future = tc.save_state("cut-off")
    try:
        with pytest.raises(tinker.RequestFailedError) as info:
            future.result()
        assert killed.is_set(), "the save finished before the upload could be cut off"
        assert "S3" in info.value.message, info.value.message
        assert rest.list_checkpoints(tc.model_id).result().checkpoints == []
    finally:
        watcher.join(timeout=130)
        if killed.is_set():
            swift.revive("proxy")
    assert not [k for k in _s3_keys(swift, "e2e-s3/") if "/cut-off-" in k]
    # The same name is free: nothing of the failed save is left, and the client trains on.
    _step(tc, 4301)
    path = tc.save_state("cut-off").result().path
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [
        path
    ]


@pytest.mark.parametrize(
    ("storage", "needle"),
    [
        ({"secret_access_key": "wrong"}, "credentials"),
        ({"bucket": "no-such-bucket"}, "no-such-bucket"),
        ({"endpoint_url": "http://127.0.0.1:9"}, "unreachable"),
    ],
)
def test_server_refuses_to_start_on_bad_s3_settings(
    swift: SwiftServer, tmp_path: Path, storage: dict[str, object], needle: str
) -> None:
    config = s3_config(swift, tmp_path / "bad.yaml", **storage)
    env = dict(os.environ, TINSMITH_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "tinsmith.cluster.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        "1",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert needle in done.stderr, done.stderr[-2000:]
    assert "secret" not in done.stderr.lower() or "wrong" not in done.stderr
