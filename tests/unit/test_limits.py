"""Request limits on the real HTTP app (a fake coordinator stands in for the actors): a body over
``max_body_bytes`` and a forward_backward over the datum or token limit get 413 naming the limit;
a tenant with ``max_pending_per_tenant`` unfinished requests gets 429 (which the SDK retries), and
the server keeps serving. The SDK is told the datum limit so it chunks its batches to fit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import MODEL, FakeCoordinator
from tests.unit.test_server_routes import _create_model, _result
from tinsmith.cluster.checkpoints import open_checkpoint_service
from tinsmith.cluster.config import LimitsConfig
from tinsmith.cluster.server import ServedModel, ServerState, build_app
from tinsmith.storage.config import StorageConfig
from tinsmith.types import AdamParams, Datum, ForwardBackwardInput, ModelInput, TensorData
from tinsmith.types.proto import encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest

LIMITS = LimitsConfig(
    max_body_bytes=1 << 16,
    max_decompressed_bytes=1 << 17,
    max_datums_per_request=4,
    max_tokens_per_request=40,
    max_pending_per_tenant=2,
)
PROTO = {"content-type": "application/x-protobuf"}


class GatedCoordinator(FakeCoordinator):
    """Holds every optim_step until the test opens the gate, so requests stay unfinished."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.gate: asyncio.Event | None = None

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        if self.gate is None:
            self.gate = asyncio.Event()
        await self.gate.wait()
        return await super().optim_step(model_id, seq_id, adam)


@pytest.fixture()
def limited(tmp_path: Path) -> Iterator[tuple[TestClient, GatedCoordinator]]:
    coordinator = GatedCoordinator(tmp_path / "data")
    served = ServedModel(
        name=MODEL,
        model_dir=tmp_path,
        max_context_length=64,
        coordinator=coordinator,
        vocab_size=100,
    )
    checkpoints = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    state = ServerState(models={MODEL: served}, checkpoints=checkpoints, limits=LIMITS)
    with TestClient(build_app(state), headers={"X-API-Key": "tml-unit"}) as client:
        yield client, coordinator


def _fb(model_id: str, n_datums: int, tokens_each: int, seq_id: int) -> bytes:
    datum = Datum(
        model_input=ModelInput.from_ints(list(range(1, tokens_each + 1))),
        loss_fn_inputs={
            "target_tokens": TensorData(data=list(range(2, tokens_each + 2)), dtype="int64")
        },
    )
    fb = ForwardBackwardInput(data=[datum] * n_datums, loss_fn="cross_entropy")
    request = ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, forward_backward_input=fb)
    return encode_forward_backward_request(request)


def test_sdk_is_told_the_datum_limit(limited: tuple[TestClient, GatedCoordinator]) -> None:
    client, _ = limited
    config = client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"}).json()
    assert config["fwdbwd_max_chunk_len"] == 4
    assert config["fwdbwd_max_chunk_bytes_count"] <= LIMITS.max_body_bytes


def test_oversized_requests_get_413_naming_the_limit(
    limited: tuple[TestClient, GatedCoordinator],
) -> None:
    client, _ = limited
    model_id = _create_model(client)

    too_many = client.post(
        "/api/v1/forward_backward", content=_fb(model_id, 5, 2, 1), headers=PROTO
    )
    assert too_many.status_code == 413
    assert (
        "max_datums_per_request" in too_many.json()["detail"]
        and "5 datums" in too_many.json()["detail"]
    )

    too_long = client.post(
        "/api/v1/forward_backward", content=_fb(model_id, 3, 20, 1), headers=PROTO
    )
    assert too_long.status_code == 413
    assert (
        "max_tokens_per_request" in too_long.json()["detail"] and "60" in too_long.json()["detail"]
    )

    huge = b"\x00" * (LIMITS.max_body_bytes + 1)
    declared = client.post("/api/v1/forward_backward", content=huge, headers=PROTO)
    assert declared.status_code == 413 and "max_body_bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b"\x00" * (LIMITS.max_body_bytes // 2)

    streamed = client.post("/api/v1/forward_backward", content=chunks(), headers=PROTO)
    assert streamed.status_code == 413 and "max_body_bytes" in streamed.json()["detail"]

    # JSON routes have their own, smaller limit: a 16 MiB prompt is refused before it is read
    # (parsing it would hold the event loop), and a body within it is served.
    prompt = {"chunks": [{"type": "encoded_text", "tokens": [7] * (8 << 20)}]}
    body = {"prompt": prompt, "num_samples": 1, "sampling_params": {}, "base_model": MODEL}
    big = client.post("/api/v1/asample", json=body)
    assert big.status_code == 413 and "max_json_body_bytes" in big.json()["detail"], big.text
    ok = client.post("/api/v1/client/config", content=b"{" + b" " * (60 << 10) + b"}")
    assert ok.status_code == 200, ok.text

    # A small zstd body that inflates past max_decompressed_bytes, with and without its size
    # in the frame header: refused before it is decoded.
    import zstandard

    zstd_headers = {**PROTO, "content-encoding": "zstd"}
    inflating = b"\x00" * (LIMITS.max_decompressed_bytes + 1)
    for sized in (True, False):
        body = zstandard.ZstdCompressor(write_content_size=sized).compress(inflating)
        assert len(body) < 1024
        bomb = client.post("/api/v1/forward_backward", content=body, headers=zstd_headers)
        assert bomb.status_code == 413, bomb.text
        assert "max_decompressed_bytes" in bomb.json()["detail"]
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(_fb(model_id, 1, 2, 1))
    assert client.post("/api/v1/forward_backward", content=packed, headers=zstd_headers).is_success

    # The server keeps serving: a request within the limits goes through.
    ok = client.post("/api/v1/forward_backward", content=_fb(model_id, 4, 10, 2), headers=PROTO)
    assert ok.status_code == 200, ok.text


def test_too_many_unfinished_requests_get_429_until_some_finish(
    limited: tuple[TestClient, GatedCoordinator],
) -> None:
    client, coordinator = limited
    model_id = _create_model(client)

    def optim(seq_id: int, key: str) -> object:
        body = {"model_id": model_id, "seq_id": seq_id, "adam_params": {}}
        return client.post("/api/v1/optim_step", json=body, headers={"X-Idempotency-Key": key})

    first, second = optim(1, "k1"), optim(2, "k2")
    assert first.status_code == second.status_code == 200  # type: ignore[attr-defined]
    third = optim(3, "k3")
    assert third.status_code == 429, third.text  # type: ignore[attr-defined]
    assert (
        "max_pending_per_tenant" in third.json()["detail"] and third.headers["retry-after"] == "1"
    )  # type: ignore[attr-defined]
    # A replay of a request already accepted is still answered (same future), not refused.
    replay = optim(1, "k1")
    assert replay.json()["request_id"] == first.json()["request_id"]  # type: ignore[attr-defined]

    assert coordinator.gate is not None
    client.portal.call(coordinator.gate.set)  # type: ignore[union-attr]
    assert "metrics" in _result(client, first.json()["request_id"])  # type: ignore[attr-defined]
    assert "metrics" in _result(client, second.json()["request_id"])  # type: ignore[attr-defined]
    assert optim(3, "k3").status_code == 200  # type: ignore[attr-defined]
