"""The HTTP surface with an in-process fake coordinator (routes, futures, validation, errors).

The fake only stands in for the actors to test the server's own logic quickly; every promise
about training and sampling is shown against the real components in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tinker.proto.response_conv import deserialize_forward_backward_output

from tinsmith.cluster.checkpoints import open_checkpoint_service
from tinsmith.cluster.server import ServedModel, ServerState, build_app
from tinsmith.errors import UserInputError
from tinsmith.storage.config import StorageConfig
from tinsmith.types import (
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    ModelInput,
    TensorData,
)
from tinsmith.types.proto import encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest

MODEL = "test/model"


class FakeCoordinator:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, *args: object) -> Awaitable[object]:
        self.calls.append(method)
        return self._run(method, args)

    async def _run(self, method: str, args: tuple[object, ...]) -> object:
        await asyncio.sleep(0)
        if method == "forward_backward":
            fb = args[2]
            assert isinstance(fb, ForwardBackwardInput)
            if fb.loss_fn != "cross_entropy":
                raise UserInputError(f"loss_fn {fb.loss_fn!r} is not supported")
            return ForwardBackwardOutput(
                loss_fn_outputs=[{"logprobs": TensorData(data=[-1.0], dtype="float32")}],
                metrics={"loss:sum": 1.0},
            )
        if method == "optim_step":
            return {"grad_norm:mean": 0.5}
        return None


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    served = ServedModel(
        name=MODEL,
        model_dir=tmp_path,
        max_context_length=64,
        coordinator=FakeCoordinator(),
        vocab_size=100,
    )
    data_dir = tmp_path / "data"
    checkpoints = open_checkpoint_service(StorageConfig(), data_dir)
    state = ServerState(models={MODEL: served}, data_dir=data_dir, checkpoints=checkpoints)
    app = build_app(state)
    app.state_ref = state  # type: ignore[attr-defined]
    with TestClient(
        app, headers={"X-API-Key": "tml-unit"}
    ) as test_client:  # one event loop for the whole test
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
    assert _result(client, fut["request_id"]) == {
        "error": "loss_fn 'bogus' is not supported",
        "category": "user",
    }

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


def test_retried_request_with_same_idempotency_key_runs_once(client: TestClient) -> None:
    model_id = _create_model(client)
    body = {"model_id": model_id, "seq_id": 1, "adam_params": {}}
    headers = {"X-Idempotency-Key": "stainless-python-retry-abc"}
    first = client.post("/api/v1/optim_step", json=body, headers=headers).json()
    again = client.post("/api/v1/optim_step", json=body, headers=headers).json()
    assert first["request_id"] == again["request_id"]
    coordinator = client.app.state_ref.models[MODEL].coordinator  # type: ignore[attr-defined]
    assert coordinator.calls.count("optim_step") == 1
