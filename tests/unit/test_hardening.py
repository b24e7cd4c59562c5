"""Issue 15's findings against the real app (FastAPI, SQLite store, local storage) in ``keys``
mode with two tenants; a fake coordinator stands in for the actors, whose promises are shown in
tests/integration. Each test names the finding it covers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import MODEL, FakeCoordinator, fake_state
from tinsmith.cluster.config import AuthConfig, LimitsConfig
from tinsmith.cluster.server import build_app
from tinsmith.errors import ConflictError
from tinsmith.store.records import CheckpointRecord, RunRecord
from tinsmith.types.training import LoraConfig

A, B = {"X-API-Key": "tml-alice"}, {"X-API-Key": "tml-bob"}


class App:
    """The app, its state and the fake coordinator behind it."""

    def __init__(self, tmp_path: Path, limits: LimitsConfig, reaper_seconds: float) -> None:
        self.state = fake_state(
            tmp_path, auth=AuthConfig(mode="keys"), limits=limits, reaper_seconds=reaper_seconds
        )
        coordinator = self.state.models[MODEL].coordinator
        assert isinstance(coordinator, FakeCoordinator)
        self.coordinator = coordinator
        self.http = TestClient(build_app(self.state))

    def session(self, who: dict[str, str]) -> str:
        resp = self.http.post("/api/v1/create_session", json={}, headers=who)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["session_id"])

    def result(self, request_id: str, who: dict[str, str]) -> dict[str, object]:
        resp = self.http.post(
            "/api/v1/retrieve_future", json={"request_id": request_id}, headers=who
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def create_model(self, who: dict[str, str], session: str, seq: int = 0) -> dict[str, object]:
        body = {"session_id": session, "model_seq_id": seq, "base_model": MODEL}
        resp = self.http.post("/api/v1/create_model", json=body, headers=who)
        assert resp.status_code == 200, resp.text
        return self.result(resp.json()["request_id"], who)


@pytest.fixture()
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("TINSMITH_API_KEYS", "alice:tml-alice,bob:tml-bob")
    apps: list[App] = []

    def make(reaper_seconds: float = 3600.0, **limits: object) -> App:
        app = App(tmp_path, LimitsConfig.model_validate(limits), reaper_seconds)
        app.http.__enter__()  # runs the lifespan (the reaper) until the test ends
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.http.__exit__(None, None, None)


def test_an_unregistered_session_id_belongs_to_its_first_user(make_app: object) -> None:
    """Finding 6: ids nobody registered used to pass the session check, so tenant B could create
    runs (and overwrite checkpoints) under tenant A's made-up session id."""
    app: App = make_app()  # type: ignore[operator]
    made_up = "my-own-session"
    assert app.create_model(A, made_up) == {
        "model_id": f"{made_up}:train:0",
        "type": "create_model",
    }
    body = {"session_id": made_up, "model_seq_id": 1, "base_model": MODEL}
    resp = app.http.post("/api/v1/create_model", json=body, headers=B)
    assert resp.status_code == 404 and "session_id" in resp.json()["detail"], resp.text
    body = {"session_id": made_up, "sampling_session_seq_id": 0, "base_model": MODEL}
    resp = app.http.post("/api/v1/create_sampling_session", json=body, headers=B)
    assert resp.status_code == 404, resp.text
    load = {"session_id": made_up, "model_seq_id": 2, "path": "tinker://x/weights/y"}
    resp = app.http.post("/api/v1/load_weights", json=load | {"optimizer": False}, headers=B)
    assert resp.status_code == 404, resp.text


def test_run_and_checkpoint_rows_never_change_owner(tmp_path: Path) -> None:
    """Finding 6: ``put_run`` and an overwriting checkpoint commit used INSERT OR REPLACE, so a
    write under another tenant's id took the row over."""
    from tinsmith.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "db.sqlite")
    lora = LoraConfig(rank=4)
    run = RunRecord(
        training_run_id="s:train:0", session_id="s", base_model=MODEL, owner="alice", lora=lora
    )
    store.put_run(run)
    store.put_run(run)  # the owner may rewrite its own
    with pytest.raises(ConflictError):
        store.put_run(run.model_copy(update={"owner": "bob"}))
    assert store.get_run("s:train:0").owner == "alice"  # type: ignore[union-attr]

    record = CheckpointRecord(
        training_run_id="s:train:0", checkpoint_id="weights/c", checkpoint_type="training",
        tinker_path="tinker://s:train:0/weights/c", owner="alice", base_model=MODEL, lora=lora,
        storage_key="k1", size_bytes=1, sha256="0" * 64, step=1, has_optimizer=True,
    )  # fmt: skip
    store.add_checkpoint(record, replace=False)
    store.add_checkpoint(record.model_copy(update={"storage_key": "k2"}), replace=True)
    with pytest.raises(ConflictError):
        store.add_checkpoint(record.model_copy(update={"owner": "bob", "storage_key": "k3"}), True)
    kept = store.get_checkpoint(record.tinker_path)
    assert kept is not None and (kept.owner, kept.storage_key) == ("alice", "k2")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("create_sampling_session", {"session_id": "s" * 300}, "session_id"),
        ("create_model", {"session_id": "a/b", "model_seq_id": 0}, "session_id"),
        ("create_model", {"session_id": "s", "model_seq_id": 10**30}, "model_seq_id"),
        ("get_info", {"model_id": "x" * 300}, "model_id"),
    ],
)
def test_ids_are_bounded_before_use(
    make_app: object, route: str, body: dict[str, object], field: str
) -> None:
    """Finding 5 (made-up 4 MiB ids kept in maps; such a body is now refused whole, by
    limits.max_json_body_bytes) and 9 (a long id echoed a server path): ids are refused (422,
    naming the field) unless short and of the characters the server uses."""
    app: App = make_app()  # type: ignore[operator]
    body = body | {"base_model": MODEL, "sampling_session_seq_id": 0}
    resp = app.http.post(f"/api/v1/{route}", json=body, headers=A)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][-1] == field, resp.text
    assert len(resp.text) < 1000


def test_live_training_clients_per_tenant_are_capped(make_app: object) -> None:
    """Finding 5: no tenant limit capped live training clients (each holds trainer memory)."""
    app: App = make_app(max_training_clients_per_tenant=2)  # type: ignore[operator]
    session = app.session(A)
    app.create_model(A, session, 0)
    app.create_model(A, session, 1)
    body = {"session_id": session, "model_seq_id": 2, "base_model": MODEL}
    resp = app.http.post("/api/v1/create_model", json=body, headers=A)
    assert resp.status_code == 429, resp.text
    assert "limits.max_training_clients_per_tenant = 2" in resp.json()["detail"]
    assert app.create_model(B, app.session(B))["type"] == "create_model"  # others are not held


def test_sampling_sessions_per_tenant_keep_the_most_recently_used(make_app: object) -> None:
    """Finding 5: the sampler map grew without bound; now a tenant's least recently used
    sampling session is forgotten when it opens one more than its limit."""
    app: App = make_app(max_sampling_sessions_per_tenant=2)  # type: ignore[operator]
    session = app.session(A)
    ids = []
    for seq in range(3):
        body = {"session_id": session, "sampling_session_seq_id": seq, "base_model": MODEL}
        resp = app.http.post("/api/v1/create_sampling_session", json=body, headers=A)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["sampling_session_id"])
        if seq == 1:  # the first is used again: the second is now the least recently used
            assert app.http.get(f"/api/v1/samplers/{ids[0]}", headers=A).status_code == 200
    assert app.http.get(f"/api/v1/samplers/{ids[1]}", headers=A).status_code == 404
    assert app.http.get(f"/api/v1/samplers/{ids[0]}", headers=A).status_code == 200
    assert app.http.get(f"/api/v1/samplers/{ids[2]}", headers=A).status_code == 200
    assert len(app.state.clients.samplers) == 2


def test_a_quiet_session_is_closed_and_its_clients_unloaded(make_app: object) -> None:
    """Finding 5: heartbeats were recorded but never used, so abandoned training clients kept
    their adapters forever. A session that sends neither heartbeats nor requests for
    ``session_timeout_seconds`` is closed; one that heartbeats keeps its clients."""
    app: App = make_app(session_timeout_seconds=1.5, reaper_seconds=0.2)  # type: ignore[operator]
    quiet, alive = app.session(A), app.session(A)
    app.create_model(A, quiet)
    app.create_model(A, alive)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        beat = {"session_id": alive}
        assert app.http.post("/api/v1/session_heartbeat", json=beat, headers=A).status_code == 200
        time.sleep(0.3)
    assert app.coordinator.models == {f"{alive}:train:0"}, app.coordinator.calls
    resp = app.http.post("/api/v1/get_info", json={"model_id": f"{quiet}:train:0"}, headers=A)
    assert resp.status_code == 404 and "no longer loaded" in resp.json()["detail"], resp.text
    resp = app.http.post("/api/v1/get_info", json={"model_id": f"{quiet}:train:0"}, headers=B)
    assert resp.status_code == 404 and "no longer loaded" not in resp.text  # B learns nothing
    resp = app.http.post("/api/v1/get_info", json={"model_id": f"{alive}:train:0"}, headers=A)
    assert resp.status_code == 200, resp.text


def test_finished_futures_are_forgotten_after_their_retention(make_app: object) -> None:
    """Finding 5: future rows, result bodies and idempotency keys were kept forever."""
    app: App = make_app()  # type: ignore[operator]
    session = app.session(A)
    model_id = str(app.create_model(A, session)["model_id"])
    first = None
    for i in range(300):
        headers = A | {"X-Idempotency-Key": f"key-{i}"}
        body = {"model_id": model_id, "seq_id": i + 1, "adam_params": {}}
        resp = app.http.post("/api/v1/optim_step", json=body, headers=headers)
        first = first or resp.json()["request_id"]
        app.result(resp.json()["request_id"], A)
    futures = app.state.futures
    assert len(futures._tasks) <= 256 and len(futures._by_idempotency_key) <= 256
    assert app.result(first, A)["metrics"]  # from the store, after leaving memory
    assert futures.prune(retention_seconds=3600) == 0  # none is that old yet
    assert futures.prune(retention_seconds=0) >= 301
    resp = app.http.post("/api/v1/retrieve_future", json={"request_id": first}, headers=A)
    assert resp.status_code == 404, resp.text


def _saved_checkpoint(app: App, who: dict[str, str]) -> tuple[str, str]:
    """A training client of ``who`` and one saved state: (model id, checkpoint route)."""
    model_id = str(app.create_model(who, app.session(who))["model_id"])
    body = {"model_id": model_id, "path": "c1", "seq_id": 1}
    resp = app.http.post("/api/v1/save_weights", json=body, headers=who)
    assert app.result(resp.json()["request_id"], who)["path"] == f"tinker://{model_id}/weights/c1"
    return model_id, f"/api/v1/training_runs/{model_id}/checkpoints/weights/c1"


def test_download_links_follow_the_checkpoints_access(make_app: object) -> None:
    """Finding 8: a link handed out while a checkpoint was public kept working after it was
    unpublished, and the files unpacked for it stayed on disk after the checkpoint's delete."""
    app: App = make_app()  # type: ignore[operator]
    _, route = _saved_checkpoint(app, A)
    assert app.http.post(f"{route}/publish", headers=A).status_code == 200
    links = {}
    for name, who in (("a", A), ("b", B)):
        resp = app.http.get(f"{route}/external_weights_urls", headers=who)
        assert resp.status_code == 200, resp.text
        links[name] = resp.json()["urls"]["adapter_config.json"]
    for url in links.values():  # no API key: the token is the credential
        assert app.http.get(url.split("testserver", 1)[1]).status_code == 200
    assert app.http.delete(f"{route}/publish", headers=A).status_code == 200
    resp = app.http.get(links["b"].split("testserver", 1)[1])
    assert resp.status_code == 404 and "no longer readable" in resp.text, resp.text
    assert app.http.get(links["a"].split("testserver", 1)[1]).status_code == 200  # the owner's

    unpacked = list((app.state.checkpoints.site.cache_dir("x").parent).iterdir())
    assert len(unpacked) == 1
    assert app.http.delete(route, headers=A).status_code == 200
    assert not unpacked[0].exists()
    assert app.http.get(links["a"].split("testserver", 1)[1]).status_code == 404


def test_a_malformed_signing_key_is_refused_and_a_new_one_is_private(tmp_path: Path) -> None:
    """Finding 8: an empty ``url-signing.key`` (a crash while writing it) was accepted, and a
    token signed with the empty key downloaded archives with no API key."""
    from tinsmith.cluster.checkpoints import URL_SECRET_BYTES, load_url_secret
    from tinsmith.errors import ConfigurationError

    secret = load_url_secret(tmp_path)
    path = tmp_path / "url-signing.key"
    assert len(secret) == URL_SECRET_BYTES and path.stat().st_mode & 0o777 == 0o600
    assert load_url_secret(tmp_path) == secret  # kept across restarts
    path.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="holds 0 bytes"):
        load_url_secret(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["url-signing.key"]  # no temporary left


def test_errors_status_and_docs_reveal_nothing_internal(
    make_app: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9: an unexpected exception went to the client as ``<Type>: <msg>`` (with server
    paths in it); any tenant saw every worker in the status; /docs answered without a key."""
    app: App = make_app()  # type: ignore[operator]
    app.state.auth = AuthConfig(mode="keys", admin_tenants=["alice"])
    model_id = str(app.create_model(B, app.session(B))["model_id"])

    async def broken(*args: object) -> None:
        raise OSError(2, "No such file", "/srv/tinsmith/data/secret/adapter.safetensors")

    monkeypatch.setattr(app.coordinator, "optim_step", broken)
    resp = app.http.post(
        "/api/v1/optim_step",
        json={"model_id": model_id, "seq_id": 1, "adam_params": {}},
        headers=B | {"X-Request-Id": "req-42"},
    )
    failed = app.result(resp.json()["request_id"], B)
    assert failed["category"] == "server", failed
    assert "/srv" not in str(failed) and "OSError" not in str(failed), failed
    assert "request id req-42" in str(failed["error"]), failed

    mine = app.http.get("/api/v1/tinsmith/status", headers=B).json()
    assert mine == [{"base_model": MODEL, "training_models": 1, "workers": [],
                     "sampler_alive": [], "sampler_requests": [], "sampler_restarts": [],
                     "trainer_restarts": 0}]  # fmt: skip
    assert "status" not in app.coordinator.calls  # nothing asked of the workers for B
    app.http.get("/api/v1/tinsmith/status", headers=A)
    assert "status" in app.coordinator.calls  # the admin's view is the coordinator's
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert app.http.get(path).status_code == 404, path


def test_keys_are_checked_stored_durably_privately_and_revocable(tmp_path: Path) -> None:
    """Finding 10: SQLite ran with synchronous=NORMAL (an acknowledged key or checkpoint could
    vanish at power loss), files were world-readable, no key could be revoked, tenant names
    were not checked where keys are loaded, and a refused entry echoed part of its key."""
    import os
    import subprocess
    import sys

    from tinsmith.cluster.auth import parse_keys
    from tinsmith.errors import ConfigurationError
    from tinsmith.store.sqlite import SQLiteStore

    config = tmp_path / "server.yaml"
    data = tmp_path / "data"
    config.write_text(f"data_dir: {data}\nauth:\n  mode: keys\nmodels: []\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tinsmith.cluster.cli", "keys", *args, "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=60)

    made = cli("create", "--tenant", "carol")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    db = data / "tinsmith.db"
    assert db.stat().st_mode & 0o777 == 0o600 and data.stat().st_mode & 0o777 == 0o700
    store = SQLiteStore(db)
    assert store._rows("PRAGMA synchronous") == [(2,)]  # FULL
    from tinsmith.cluster.auth import hash_key

    assert store.tenant_for_key(hash_key(key)) == "carol"
    revoked = cli("revoke", "--key", key)
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout, revoked.stderr
    assert store.tenant_for_key(hash_key(key)) is None
    assert cli("revoke", "--tenant", "nobody").returncode == 1
    assert cli("create", "--tenant", "a/b").returncode == 2

    for text in ("a/b:tml-secretsecret", "tenant-without-key", "t:not-a-tml-key-abcdef"):
        with pytest.raises(ConfigurationError) as info:
            parse_keys(f"ok:tml-fine,{text}", "$TINSMITH_API_KEYS")
        assert "entry 2" in str(info.value) and "secret" not in str(info.value)
        assert "abcdef" not in str(info.value)
