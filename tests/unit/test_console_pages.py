"""The console's pages over the HTTP app with the in-process fake coordinator: sign-in, each
page, tenant isolation, checkpoint actions, and pages at scale (1,000 runs, 10,000 metric
points). The same pages in a real browser against a real server: tests/integration/
test_console.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.fakes import MODEL, fake_state
from tinsmith.cluster.config import AuthConfig
from tinsmith.cluster.console.plots import MAX_POINTS
from tinsmith.cluster.server import ServerState, build_app
from tinsmith.store.records import RunRecord, utcnow
from tinsmith.types import Datum, ForwardBackwardInput, ModelInput, TensorData
from tinsmith.types.proto import encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest
from tinsmith.types.training import LoraConfig

ALICE = {"X-API-Key": "tml-alice"}
BOB = {"X-API-Key": "tml-bob"}


@pytest.fixture()
def app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, ServerState]]:
    monkeypatch.setenv("TINSMITH_API_KEYS", "alice:tml-alice,bob:tml-bob")
    state = fake_state(tmp_path, auth=AuthConfig(mode="keys"))
    with TestClient(build_app(state)) as client:
        yield client, state


def _done(client: TestClient, response_json: dict[str, object], who: dict[str, str]) -> bytes:
    resp = client.post(
        "/api/v1/retrieve_future", json={"request_id": response_json["request_id"]}, headers=who
    )
    assert resp.status_code == 200, resp.text
    return resp.content


def _train(client: TestClient, who: dict[str, str], steps: int) -> tuple[str, str, str]:
    """A session and a training client of ``who`` with ``steps`` steps and one saved
    checkpoint: (session id, run id, checkpoint id)."""
    session = client.post("/api/v1/create_session", json={}, headers=who).json()["session_id"]
    body = {"session_id": session, "model_seq_id": 0, "base_model": MODEL}
    _done(client, client.post("/api/v1/create_model", json=body, headers=who).json(), who)
    run = f"{session}:train:0"
    datum = Datum(
        model_input=ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": TensorData(data=[2, 3], dtype="int64")},
    )
    seq = 0
    for _ in range(steps):
        seq += 1
        fb = ForwardBackwardRequest(
            model_id=run,
            seq_id=seq,
            forward_backward_input=ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        )
        raw = encode_forward_backward_request(fb)
        headers = {**who, "content-type": "application/x-protobuf"}
        _done(
            client,
            client.post("/api/v1/forward_backward", content=raw, headers=headers).json(),
            who,
        )
        seq += 1
        step = {"model_id": run, "seq_id": seq, "adam_params": {"learning_rate": 1e-3}}
        _done(client, client.post("/api/v1/optim_step", json=step, headers=who).json(), who)
    save = {"model_id": run, "path": "first", "seq_id": seq + 1}
    _done(client, client.post("/api/v1/save_weights", json=save, headers=who).json(), who)
    return session, run, "weights/first"


def _sign_in(client: TestClient, key: str) -> None:
    client.cookies.clear()
    resp = client.post(
        "/console/login", data={"api_key": key, "next": "/console/sessions"}, follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/console/sessions", resp.text
    assert "httponly" in resp.headers["set-cookie"].lower()
    assert key not in resp.headers["set-cookie"]  # a random token, never the key


def test_sign_in_is_required_and_comes_back_to_the_page(
    app: tuple[TestClient, ServerState],
) -> None:
    client, _ = app
    resp = client.get("/console/training_runs/x", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console/login?next=" + quote(
        "/console/training_runs/x", safe=""
    )
    bad = client.post("/console/login", data={"api_key": "tml-nobody", "next": "/console/sessions"})
    assert bad.status_code == 401 and "not one this server accepts" in bad.text
    offsite = client.post(
        "/console/login",
        data={"api_key": "tml-alice", "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert offsite.headers["location"] == "/console/sessions"
    assert client.get("/console/sessions").status_code == 200
    client.post("/console/logout")
    assert client.get("/console/sessions", follow_redirects=False).status_code == 303


def test_pages_show_a_tenants_own_objects_only(app: tuple[TestClient, ServerState]) -> None:
    client, _ = app
    session, run, ckpt = _train(client, ALICE, steps=3)
    _sign_in(client, "tml-alice")
    assert session in client.get("/console/sessions").text
    assert run in client.get(f"/console/sessions/{quote(session, safe='')}").text
    page = client.get(f"/console/training_runs/{quote(run, safe='')}").text
    loss = re.search(r'<svg class="plot" data-metric="loss:sum".*?</svg>', page, re.S)
    assert loss and loss.group(0).count('class="point"') == 3  # one point per step
    ckpt_url = f"/console/checkpoints/{quote(run, safe='')}/{quote(ckpt, safe='')}"
    detail = client.get(ckpt_url)
    assert (
        detail.status_code == 200
        and "private" in detail.text
        and "/api/v1/tinsmith/files/" in detail.text
    )
    assert "Try it in the playground" in detail.text
    assert "Cluster" in client.get("/console/cluster").text

    _sign_in(client, "tml-bob")
    for url in (
        f"/console/sessions/{quote(session, safe='')}",
        f"/console/training_runs/{quote(run, safe='')}",
        ckpt_url,
    ):
        resp = client.get(url)
        assert resp.status_code == 404 and "does not exist" in resp.text, url
    assert client.post(ckpt_url, data={"action": "delete"}).status_code == 404
    assert session not in client.get("/console/sessions").text


def test_publish_then_delete_after_confirming(app: tuple[TestClient, ServerState]) -> None:
    client, state = app
    _, run, ckpt = _train(client, ALICE, steps=1)
    url = f"/console/checkpoints/{quote(run, safe='')}/{quote(ckpt, safe='')}"
    _sign_in(client, "tml-alice")
    assert client.post(url, data={"action": "publish"}).status_code == 200
    assert state.store.get_checkpoint(f"tinker://{run}/{ckpt}").public  # type: ignore[union-attr]
    _sign_in(client, "tml-bob")  # a published checkpoint: readable, not changeable
    assert client.get(url).status_code == 200
    assert client.post(url, data={"action": "unpublish"}).status_code == 404
    _sign_in(client, "tml-alice")
    assert "Yes, delete" not in client.get(url).text
    assert "Yes, delete" in client.get(url + "?confirm=delete").text
    assert client.post(url, data={"action": "bogus"}).status_code == 400
    assert client.post(url, data={"action": "delete"}).status_code == 200
    assert state.store.get_checkpoint(f"tinker://{run}/{ckpt}") is None
    assert client.get(url).status_code == 404


def test_pages_at_scale(
    app: tuple[TestClient, ServerState], capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 runs and 10,000 metric points: listings are paged, plots drawn from at most
    MAX_POINTS points; the render times are printed (benchmarks/console.py measures them)."""
    client, state = app
    store = state.store
    for i in range(1000):
        store.put_run(
            RunRecord(
                training_run_id=f"s{i // 10}:train:{i % 10}",
                session_id=f"s{i // 10}",
                base_model=MODEL,
                owner="alice",
                lora=LoraConfig(rank=8),
            )
        )
    run = "s0:train:0"
    now = utcnow()
    for i in range(10_000):
        kind = "optim_step" if i % 2 else "forward_backward"
        store.add_metrics(
            run, kind, {"loss:sum": 1.0 / (i + 1), "num_tokens:sum": 100.0}, now, 10_000
        )
    _sign_in(client, "tml-alice")
    timings = {}
    for url in ("/console/training_runs", f"/console/training_runs/{quote(run, safe='')}"):
        start = time.perf_counter()
        resp = client.get(url)
        timings[url] = time.perf_counter() - start
        assert resp.status_code == 200
    listing = client.get("/console/training_runs").text
    assert listing.count("<tr>") == 51 and "1–50 of 1000" in listing
    page = client.get(f"/console/training_runs/{quote(run, safe='')}").text
    for points in re.findall(r'data-points="(\d+)"', page):
        assert int(points) <= MAX_POINTS
    assert "<td>optimizer steps</td><td>5000</td>" in page
    with capsys.disabled():
        print({url: f"{seconds * 1000:.0f} ms" for url, seconds in timings.items()})


def test_metrics_keep_the_newest_points_and_count_steps_on(
    app: tuple[TestClient, ServerState],
) -> None:
    store = app[1].store
    now = utcnow()
    for i in range(300):
        kind = "optim_step" if i % 3 == 2 else "forward_backward"
        step = store.add_metrics("r", kind, {"loss:sum": float(i)}, now, 100)
        assert step == i // 3 + 1  # two forward_backwards, then the optim_step that closes them
    points = store.run_metrics("r", 1000)
    assert len(points) == 100 and points[0].metrics["loss:sum"] == 200.0
    assert points[-1].step == 100 and points[-1].kind == "optim_step"
