"""The HTTP surface with an in-process fake coordinator (routes, futures, validation, errors).

The fake (``tests/fakes.py``) only stands in for the actors to test the server's own logic
quickly; every promise about training and sampling is shown against the real components in
tests/integration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tinker.proto.response_conv import deserialize_forward_backward_output

from tests.fakes import MODEL, FakeCoordinator
from tinsmith.cluster.checkpoints import open_checkpoint_service
from tinsmith.cluster.server import ServedModel, ServerState, build_app
from tinsmith.storage.config import StorageConfig
from tinsmith.types import Datum, ForwardBackwardInput, ModelInput, TensorData
from tinsmith.types.proto import encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest


@pytest.fixture()
def coordinator(tmp_path: Path) -> FakeCoordinator:
    return FakeCoordinator(tmp_path / "data")


@pytest.fixture()
def client(tmp_path: Path, coordinator: FakeCoordinator) -> Iterator[TestClient]:
    served = ServedModel(
        name=MODEL,
        model_dir=tmp_path,
        max_context_length=64,
        coordinator=coordinator,
        vocab_size=100,
    )
    checkpoints = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    state = ServerState(models={MODEL: served}, checkpoints=checkpoints)
    # one event loop for the whole test
    with TestClient(build_app(state), headers={"X-API-Key": "tml-unit"}) as test_client:
        yield test_client


def _result(client: TestClient, request_id: str) -> dict[str, object]:
    resp = client.post("/api/v1/retrieve_future", json={"request_id": request_id})
    assert resp.status_code == 200
    return dict(resp.json())


def _create_model(client: TestClient) -> str:
    session = client.post(
        "/api/v1/create_session", json={"tags": [], "sdk_version": "0.38.0"}
    ).json()["session_id"]
    fut = client.post(
        "/api/v1/create_model",
        json={
            "session_id": session,
            "model_seq_id": 0,
            "base_model": MODEL,
            "lora_config": {"rank": 4},
        },
    ).json()
    assert _result(client, fut["request_id"]) == {
        "model_id": f"{session}:train:0",
        "type": "create_model",
    }
    return str(fut["model_id"])


def test_handshake_routes(client: TestClient) -> None:
    assert client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"}).status_code == 200
    assert (
        client.post("/api/v1/client/dynamic_config", json={"sdk_version": "0.38.0"}).status_code
        == 200
    )
    assert client.get("/api/v1/healthz").json() == {"status": "ok"}
    caps = client.get("/api/v1/get_server_capabilities").json()
    assert caps["supported_models"][0]["model_name"] == MODEL


def test_training_round_trip_and_failures(client: TestClient) -> None:
    model_id = _create_model(client)
    info = client.post("/api/v1/get_info", json={"model_id": model_id}).json()
    assert info["lora_rank"] == 4 and info["model_data"]["tokenizer_id"]

    def fb_body(loss_fn: str) -> bytes:
        datum = Datum(
            model_input=ModelInput.from_ints([1, 2]),
            loss_fn_inputs={"target_tokens": TensorData(data=[2, 3], dtype="int64")},
        )
        req = ForwardBackwardRequest(
            model_id=model_id,
            seq_id=1,
            forward_backward_input=ForwardBackwardInput(data=[datum], loss_fn=loss_fn),
        )
        return encode_forward_backward_request(req)

    headers = {"content-type": "application/x-protobuf"}
    fut = client.post(
        "/api/v1/forward_backward", content=fb_body("cross_entropy"), headers=headers
    ).json()
    resp = client.post("/api/v1/retrieve_future", json={"request_id": fut["request_id"]})
    assert resp.headers["content-type"] == "application/x-protobuf"
    assert deserialize_forward_backward_output(resp.content).metrics == {"loss:sum": 1.0}

    fut = client.post("/api/v1/forward_backward", content=fb_body("bogus"), headers=headers).json()
    failed = _result(client, fut["request_id"])
    assert failed["category"] == "user"
    assert str(failed["error"]).startswith("loss_fn 'bogus' is not supported")

    bad = client.post("/api/v1/forward_backward", content=b"\xff\xff\xff", headers=headers)
    assert bad.status_code == 400

    fut = client.post(
        "/api/v1/optim_step", json={"model_id": model_id, "seq_id": 2, "adam_params": {}}
    ).json()
    assert _result(client, fut["request_id"]) == {"metrics": {"grad_norm:mean": 0.5}}


def test_unknown_things_are_named(client: TestClient) -> None:
    resp = client.post("/api/v1/get_info", json={"model_id": "nope"})
    assert resp.status_code == 404 and "nope" in resp.json()["detail"]
    fut = client.post(
        "/api/v1/create_model",
        json={"session_id": "s", "model_seq_id": 0, "base_model": "other/model"},
    ).json()
    failed = _result(client, fut["request_id"])
    assert failed["category"] == "user" and "other/model" in str(failed["error"])
    assert client.post("/api/v1/retrieve_future", json={"request_id": "missing"}).status_code == 404


@pytest.mark.parametrize(
    ("params", "extra", "needle"),
    [
        ({"max_tokens": 0}, {}, "max_tokens"),
        ({"top_p": 1.5}, {}, "top_p"),
        ({"temperature": -1}, {}, "temperature"),
        ({"top_k": 0}, {}, "top_k"),
        (
            {},
            {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [5, 500]}]}},
            "outside the vocabulary",
        ),
        (
            {},
            {"prompt": {"chunks": [{"type": "encoded_text", "tokens": list(range(64))}]}},
            "context",
        ),
        ({}, {"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_sampling_requests_are_refused(
    client: TestClient, params: dict[str, object], extra: dict[str, object], needle: str
) -> None:
    body: dict[str, object] = {
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 4, **params},
        "base_model": MODEL,
        **extra,
    }
    resp = client.post("/api/v1/asample", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["detail"]


def test_retried_request_with_same_idempotency_key_runs_once(
    client: TestClient, coordinator: FakeCoordinator
) -> None:
    model_id = _create_model(client)
    body = {"model_id": model_id, "seq_id": 1, "adam_params": {}}
    headers = {"X-Idempotency-Key": "stainless-python-retry-abc"}
    first = client.post("/api/v1/optim_step", json=body, headers=headers).json()
    again = client.post("/api/v1/optim_step", json=body, headers=headers).json()
    assert first["request_id"] == again["request_id"]
    assert coordinator.calls.count("optim_step") == 1


def test_requests_the_server_refuses_still_reach_the_coordinator(
    client: TestClient, coordinator: FakeCoordinator
) -> None:
    """A training request the server answers itself goes to ``refuse``, which consumes its
    seq_id (so the client's later requests are not left waiting) and fails it as the user's."""
    model_id = _create_model(client)
    body = {"model_id": model_id, "seq_id": 1, "optimizer_params": {"learning_rate": 0.1}}
    fut = client.post("/api/v1/optim_step", json=body).json()
    assert _result(client, fut["request_id"]) == {
        "error": "optimizer_params (dimuon) is not supported; send adam_params",
        "category": "user",
    }
    assert coordinator.calls[-1] == "refuse" and "optim_step" not in coordinator.calls


def test_status_asks_every_coordinator(client: TestClient) -> None:
    _create_model(client)
    (status,) = client.get("/api/v1/tinsmith/status").json()
    assert status["base_model"] == MODEL and status["training_models"] == 1
