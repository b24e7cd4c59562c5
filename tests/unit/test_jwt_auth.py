"""JWTs the SDK trades its key for (``pjwt_auth_enabled``), and the auth routes, over the HTTP
app with the in-process fake coordinator. Through the real SDK and CLI (whoami):
tests/integration/test_sdk_checkpoints.py; every integration test's SDK traffic runs on JWTs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import fake_state
from tinsmith.cluster.auth import hash_key
from tinsmith.cluster.checkpoints import open_checkpoint_service
from tinsmith.cluster.config import AuthConfig
from tinsmith.cluster.jwt_tokens import InvalidToken, JwtIssuer
from tinsmith.cluster.server import ServerState, build_app
from tinsmith.storage.config import StorageConfig


def test_tokens_carry_the_tenant_until_they_expire() -> None:
    issuer = JwtIssuer(b"k" * 32, ttl_seconds=60)
    token = issuer.issue("alice", now=1000.0)
    assert issuer.tenant(token, now=1059.0) == "alice"
    with pytest.raises(InvalidToken, match="expired"):
        issuer.tenant(token, now=1060.0)
    with pytest.raises(InvalidToken, match="signature"):
        JwtIssuer(b"x" * 32, ttl_seconds=60).tenant(token, now=1000.0)
    head, _, sig = token.split(".")
    forged = issuer.issue("bob", now=1000.0).split(".")[1]
    with pytest.raises(InvalidToken, match="signature"):
        issuer.tenant(f"{head}.{forged}.{sig}", now=1000.0)
    with pytest.raises(InvalidToken, match="malformed"):
        issuer.tenant("a.b.c", now=1000.0)


@pytest.fixture()
def app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, ServerState]]:
    monkeypatch.setenv("TINSMITH_API_KEYS", "alice:tml-alice")
    state = fake_state(tmp_path, auth=AuthConfig(mode="keys", jwt_ttl_seconds=60))
    with TestClient(build_app(state)) as client:
        yield client, state


def test_the_sdk_is_told_to_use_jwts_and_they_act_as_the_key(
    app: tuple[TestClient, ServerState],
) -> None:
    client, _ = app
    config = client.post("/api/v1/client/config", json={}, headers={"X-API-Key": "tml-alice"})
    assert config.json()["pjwt_auth_enabled"] is True
    jwt = client.post("/api/v1/auth/token", headers={"X-API-Key": "tml-alice"}).json()["jwt"]
    session = client.post("/api/v1/create_session", json={}, headers={"X-API-Key": jwt})
    assert session.status_code == 200
    sid = session.json()["session_id"]
    # the session is alice's whether she names it with her key or her token
    assert (
        client.get(f"/api/v1/sessions/{sid}", headers={"X-API-Key": "tml-alice"}).status_code == 200
    )
    # a token cannot extend itself, and a bad one tells the SDK to fetch another
    assert client.post("/api/v1/auth/token", headers={"X-API-Key": jwt}).status_code == 401
    bad = client.post("/api/v1/create_session", json={}, headers={"X-API-Key": jwt[:-4] + "AAAA"})
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert client.post("/api/v1/auth/token", headers={"X-API-Key": "tml-nobody"}).status_code == 401
    # a key with dots is still a key (unknown here: 401 without the token-refresh header)
    dotted = client.post("/api/v1/create_session", json={}, headers={"X-API-Key": "tml-a.b.c"})
    assert dotted.status_code == 401 and "WWW-Authenticate" not in dotted.headers


def test_a_key_describes_and_revokes_itself(app: tuple[TestClient, ServerState]) -> None:
    client, state = app
    me = client.get("/api/v1/auth/apikey/me", headers={"X-API-Key": "tml-alice"}).json()
    assert me["details"]["org_details"]["name"] == "alice" and me["key_id"] > 0
    # a key from the server's configuration is the operator's to remove
    assert (
        client.delete("/api/v1/auth/apikey/me", headers={"X-API-Key": "tml-alice"}).status_code
        == 409
    )
    state.store.add_api_key(hash_key("tml-made-by-keys-create"), "carol")
    made = {"X-API-Key": "tml-made-by-keys-create"}
    assert (
        client.get("/api/v1/auth/apikey/me", headers=made).json()["details"]["org_details"]["name"]
        == "carol"
    )
    assert client.delete("/api/v1/auth/apikey/me", headers=made).status_code == 200
    assert client.get("/api/v1/auth/apikey/me", headers=made).status_code == 401


def test_jwts_can_be_turned_off(tmp_path: Path) -> None:
    state = ServerState(
        models={},
        checkpoints=open_checkpoint_service(StorageConfig(), tmp_path / "data"),
        auth=AuthConfig(issue_jwts=False),
    )
    with TestClient(build_app(state), headers={"X-API-Key": "tml-x"}) as client:
        assert client.post("/api/v1/client/config", json={}).json()["pjwt_auth_enabled"] is False
        assert client.post("/api/v1/auth/token").status_code == 404
