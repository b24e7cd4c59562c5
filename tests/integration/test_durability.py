"""A restart loses nothing that finished, and a retried request is applied once.

The restart test runs its own trainer-only server twice over one data directory, the first
ended by SIGKILL right after a save and a new API key were acknowledged; the replay test sends
raw wire requests (protobuf forward_backward, JSON optim_step) to the session server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tinker
import yaml
from tinker import types

from tests.conftest import DEFAULT_MODEL, ROOT
from tests.integration.helpers import (
    TINY_MODEL,
    checkpoint_dir,
    datum,
    random_tokens,
    read_adapter,
    tiny_model_spec,
)
from tinsmith.types import Datum, ForwardBackwardInput, ModelInput, TensorData
from tinsmith.types.proto import encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest

pytestmark = pytest.mark.integration


def _post(
    base_url: str,
    path: str,
    body: bytes | dict[str, object],
    key: str | None = None,
    api_key: str = "tml-tests",
) -> dict[str, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "Content-Type": "application/x-protobuf" if isinstance(body, bytes) else "application/json"
    }
    headers["X-API-Key"] = api_key
    if key:
        headers["X-Idempotency-Key"] = key
    req = urllib.request.Request(f"{base_url}{path}", data=raw, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _result(base_url: str, request_id: str) -> bytes:
    """The finished future's raw body (waits through try_again answers)."""
    for _ in range(20):
        req = urllib.request.Request(
            f"{base_url}/api/v1/retrieve_future",
            data=json.dumps({"request_id": request_id, "allow_metadata_only": True}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": "tml-tests"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
        if b'"try_again"' not in body:
            return body
    raise AssertionError(f"{request_id} never finished")


def _outcome(body: bytes) -> dict[str, object]:
    """A finished future's body as JSON; {} for a binary (protobuf) result, which is a success."""
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _create_key(config: Path, data_dir: Path, tenant: str) -> str:
    """``tinsmith keys create`` against a running server's data directory."""
    env = dict(os.environ, TINSMITH_DATA_DIR=str(data_dir))
    cmd = [sys.executable, "-m", "tinsmith.cluster.cli", "keys", "create", "--config", str(config)]
    done = subprocess.run(
        [*cmd, "--tenant", tenant], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_restart_keeps_sessions_runs_checkpoints_and_results(tmp_path: Path) -> None:
    from tinsmith.cluster.launcher import ServerProcess

    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["models"] = [tiny_model_spec()]  # the promise holds for any model; this one starts fast
    raw["sampler"]["num_replicas"] = 0
    config = tmp_path / "durable.yaml"
    config.write_text(yaml.safe_dump(raw))
    data_dir = tmp_path / "data"
    batches = [[datum(random_tokens(8000 + i, 18))] for i in range(3)]
    adam = types.AdamParams(learning_rate=2e-3, weight_decay=0.01)

    with ServerProcess(config, data_dir=data_dir) as first:
        service = tinker.ServiceClient(base_url=first.base_url, api_key="tml-tests")
        tc = service.create_lora_training_client(base_model=TINY_MODEL, rank=4).result()
        tc.forward_backward(batches[0], "cross_entropy").result()
        tc.optim_step(adam).result()
        path = tc.save_state("before-restart").result().path
        session_id = tc.model_id.split(":train:")[0]
        created = _post(first.base_url, "/api/v1/create_model", {
            "session_id": session_id, "model_seq_id": 99, "base_model": TINY_MODEL,
            "lora_config": {"rank": 2}, "optimizer_config": {"type": "adamw"},
        }, key="create-99")  # fmt: skip
        finished = _result(first.base_url, str(created["request_id"]))
        # The reference: continue the original client exactly as the resumed one will.
        for batch in batches[1:]:
            tc.forward_backward(batch, "cross_entropy").result()
            tc.optim_step(adam).result()
        reference = tc.save_weights_for_sampler("reference").result().path
        expected = read_adapter(checkpoint_dir(first, reference))
        # A key made while the server runs, then the power-cut stand-in: SIGKILL to the server's
        # whole process group right after the last save and the key were acknowledged.
        late_key = _create_key(config, data_dir, "late")
        os.killpg(first.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        first.proc.wait(timeout=60)  # type: ignore[union-attr]

    with ServerProcess(config, data_dir=data_dir) as second:
        # Both survived: the key authenticates, and the last save is listed and loadable.
        assert "session_id" in _post(
            second.base_url, "/api/v1/create_session", {}, api_key=late_key
        )
        rest = tinker.RestClient(base_url=second.base_url, api_key="tml-tests")
        listed = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
        assert {path, reference} <= listed, listed
        assert read_adapter(checkpoint_dir(second, reference)).keys() == expected.keys()
        # A finished request's result, and its idempotency key, outlive the process.
        assert _result(second.base_url, str(created["request_id"])) == finished
        again = _post(second.base_url, "/api/v1/create_model", {
            "session_id": session_id, "model_seq_id": 99, "base_model": TINY_MODEL,
            "lora_config": {"rank": 2}, "optimizer_config": {"type": "adamw"},
        }, key="create-99")  # fmt: skip
        assert again["request_id"] == created["request_id"]
        assert (
            _post(second.base_url, "/api/v1/session_heartbeat", {"session_id": session_id})
            is not None
        )
        assert rest.get_training_run(tc.model_id).result().lora_rank == 4
        # The client resumes from its last save_state, exactly.
        service2 = tinker.ServiceClient(base_url=second.base_url, api_key="tml-tests")
        resumed = service2.create_training_client_from_state_with_optimizer(path).result()
        for batch in batches[1:]:
            resumed.forward_backward(batch, "cross_entropy").result()
            resumed.optim_step(adam).result()
        got = read_adapter(
            checkpoint_dir(second, resumed.save_weights_for_sampler("resumed").result().path)
        )
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)


def _fb_body(model_id: str, seq_id: int, tokens: list[int]) -> bytes:
    d = Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(data=tokens[1:], dtype="int64", shape=[len(tokens) - 1]),
            "weights": TensorData(
                data=[1.0] * (len(tokens) - 1), dtype="float32", shape=[len(tokens) - 1]
            ),
        },
    )
    fb = ForwardBackwardInput(data=[d], loss_fn="cross_entropy")
    return encode_forward_backward_request(
        ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, forward_backward_input=fb)
    )


def test_replayed_requests_apply_once(service_client: tinker.ServiceClient, server: object) -> None:
    base_url: str = server.base_url  # type: ignore[attr-defined]
    tokens = random_tokens(8100, 20)
    adam = {
        "learning_rate": 5e-3,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    reference = service_client.create_lora_training_client(
        base_model=DEFAULT_MODEL, rank=4
    ).result()
    reference.forward_backward([datum(tokens)], "cross_entropy").result()
    reference.optim_step(types.AdamParams(**adam)).result()  # type: ignore[arg-type]
    expected = read_adapter(
        checkpoint_dir(server, reference.save_weights_for_sampler("once").result().path)
    )

    replayed = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    model_id = replayed.model_id
    first = _post(base_url, "/api/v1/forward_backward", _fb_body(model_id, 1, tokens), key="fb-1")
    assert (
        _post(base_url, "/api/v1/forward_backward", _fb_body(model_id, 1, tokens), key="fb-1")
        == first
    )
    replay_seq = _post(
        base_url, "/api/v1/forward_backward", _fb_body(model_id, 1, tokens), key="fb-1-again"
    )
    step = {"model_id": model_id, "seq_id": 2, "adam_params": adam, "type": "optim_step"}
    stepped = _post(base_url, "/api/v1/optim_step", step, key="step-2")
    assert _post(base_url, "/api/v1/optim_step", step, key="step-2") == stepped
    replay_step = _post(base_url, "/api/v1/optim_step", step, key="step-2-again")
    # The same seq_id under a new key: one of the two runs, the other is refused, nothing is
    # applied twice. Usually the replay is the one refused; which one runs is the order in which
    # the two reach the client's sequencer, and the replay's can come first (seen once, as this
    # just-started server's first request: the replay ran and the original was refused).
    for original, replay in ((first, replay_seq), (stepped, replay_step)):
        bodies = [_outcome(_result(base_url, str(r["request_id"]))) for r in (original, replay)]
        refused = [b for b in bodies if b.get("category") == "user"]
        assert len(refused) == 1 and "already used" in str(refused[0].get("error")), bodies

    save = {
        "model_id": model_id,
        "seq_id": 3,
        "path": "replayed",
        "type": "save_weights_for_sampler",
    }
    saved = json.loads(
        _result(
            base_url, str(_post(base_url, "/api/v1/save_weights_for_sampler", save)["request_id"])
        )
    )
    got = read_adapter(checkpoint_dir(server, saved["path"]))
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_unknown_future_is_404(server: object) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server.base_url, "/api/v1/retrieve_future", {"request_id": "nope"})  # type: ignore[attr-defined]
    assert info.value.code == 404
