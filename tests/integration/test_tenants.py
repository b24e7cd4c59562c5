"""Two tenants on one server (configs/test.yaml requires API keys): everything one owns is
invisible to the other (404 / "does not exist"), except published checkpoints, which the other
may read and load but never delete; a missing or unknown key gets 401; `tinsmith keys create`
makes a key the server accepts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, OTHER_TENANT_KEY
from tests.integration.helpers import datum, expect_user_error, random_tokens

pytestmark = pytest.mark.integration


def _http(
    base_url: str, method: str, path: str, key: str | None, body: object = None
) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base_url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_tenants_are_isolated(service_client: tinker.ServiceClient, server: object) -> None:
    base_url: str = server.base_url  # type: ignore[attr-defined]
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    tc.forward_backward([datum(random_tokens(9000, 16))], "cross_entropy").result()
    tc.optim_step(types.AdamParams()).result()
    private = tc.save_state("private").result().path
    shared = tc.save_state("shared").result().path
    sampler_path = tc.save_weights_for_sampler("private-sampler").result().path
    external = tc.save_weights_external("private-export").result().path
    alice = tinker.RestClient(base_url=base_url, api_key="tml-tests")
    alice.publish_checkpoint_from_tinker_path(shared).result()
    run_id = tc.model_id
    session_id = run_id.split(":train:")[0]
    _, run, name = private[len("tinker://") :].split("/")

    bob_service = tinker.ServiceClient(base_url=base_url, api_key=OTHER_TENANT_KEY)
    bob = tinker.RestClient(base_url=base_url, api_key=OTHER_TENANT_KEY)
    # Listing and reading
    assert run_id not in {
        r.training_run_id for r in bob.list_training_runs(limit=1000).result().training_runs
    }
    assert not {private, shared} & {
        c.tinker_path for c in bob.list_user_checkpoints(limit=10000).result().checkpoints
    }
    with pytest.raises(tinker.NotFoundError):
        bob.get_training_run(run_id).result()
    with pytest.raises(tinker.NotFoundError):
        bob.list_checkpoints(run_id).result()
    with pytest.raises(tinker.NotFoundError):
        bob.get_weights_info_by_tinker_path(private).result()
    with pytest.raises(tinker.NotFoundError):
        bob.get_external_weights_urls(external).result()
    # Loading and sampling
    expect_user_error(bob_service.create_training_client_from_state(private), "does not exist")
    with pytest.raises(Exception, match="does not exist"):
        bob_service.create_sampling_client(model_path=sampler_path).result()
    status, made = _http(
        base_url, "POST", "/api/v1/create_sampling_session", "tml-tests",
        {"session_id": session_id, "sampling_session_seq_id": 500, "model_path": sampler_path},
    )  # fmt: skip
    sampler_id = made["sampling_session_id"]  # type: ignore[index]
    assert _http(base_url, "GET", f"/api/v1/samplers/{sampler_id}", "tml-tests")[0] == 200
    # Alice's session id (public in her tinker:// paths) does not let Bob replace her sampler.
    status, _ = _http(
        base_url, "POST", "/api/v1/create_sampling_session", OTHER_TENANT_KEY,
        {"session_id": session_id, "sampling_session_seq_id": 500, "base_model": DEFAULT_MODEL},
    )  # fmt: skip
    assert status == 404
    _, still = _http(base_url, "GET", f"/api/v1/samplers/{sampler_id}", "tml-tests")
    assert still["model_path"] == sampler_path, still  # type: ignore[index]
    assert _http(base_url, "GET", f"/api/v1/samplers/{sampler_id}", OTHER_TENANT_KEY)[0] == 404
    prompt = {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}
    sample = {
        "sampling_session_id": sampler_id,
        "prompt": prompt,
        "sampling_params": {"max_tokens": 2},
        "num_samples": 1,
    }
    assert _http(base_url, "POST", "/api/v1/asample", OTHER_TENANT_KEY, sample)[0] == 404
    # Changing and deleting
    for call in (
        lambda: bob.delete_checkpoint_from_tinker_path(private).result(),
        lambda: bob.publish_checkpoint_from_tinker_path(private).result(),
        lambda: bob.set_checkpoint_ttl_from_tinker_path(private, 60).result(),
        lambda: bob.delete_checkpoint_from_tinker_path(shared).result(),
    ):
        with pytest.raises(tinker.NotFoundError):
            call()
    # Training requests, futures and sessions
    status, future = _http(
        base_url, "POST", "/api/v1/optim_step", OTHER_TENANT_KEY, {"model_id": run_id, "seq_id": 99}
    )
    assert status == 200
    status, failed = _http(base_url, "POST", "/api/v1/retrieve_future", OTHER_TENANT_KEY, future)
    assert failed["category"] == "user" and "unknown" in failed["error"], failed  # type: ignore[index]
    alice_create = {
        "session_id": session_id,
        "model_seq_id": 501,
        "base_model": DEFAULT_MODEL,
        "lora_config": {"rank": 2},
    }
    _, alice_future = _http(base_url, "POST", "/api/v1/create_model", "tml-tests", alice_create)
    assert (
        _http(base_url, "POST", "/api/v1/retrieve_future", OTHER_TENANT_KEY, alice_future)[0] == 404
    )
    assert _http(base_url, "POST", "/api/v1/retrieve_future", "tml-tests", alice_future)[0] == 200
    status, _ = _http(
        base_url, "POST", "/api/v1/session_heartbeat", OTHER_TENANT_KEY, {"session_id": session_id}
    )
    assert status == 404
    create = {
        "session_id": session_id,
        "model_seq_id": 77,
        "base_model": DEFAULT_MODEL,
        "lora_config": {"rank": 2},
    }
    status, _ = _http(base_url, "POST", "/api/v1/create_model", OTHER_TENANT_KEY, create)
    assert status == 404
    status, _ = _http(
        base_url,
        "GET",
        f"/api/v1/training_runs/{run}/checkpoints/weights/{name}/archive",
        OTHER_TENANT_KEY,
    )
    assert status == 404

    # A published checkpoint: readable and loadable by the other
    # tenant, still not deletable (above).
    assert bob.get_weights_info_by_tinker_path(shared).result().lora_rank == 4
    loaded = bob_service.create_training_client_from_state(shared).result()
    assert (
        loaded.forward_backward([datum(random_tokens(9001, 12))], "cross_entropy")
        .result()
        .metrics["loss:sum"]
        > 0
    )
    # The owner still has everything.
    assert {private, shared, sampler_path} <= {
        c.tinker_path for c in alice.list_checkpoints(run_id).result().checkpoints
    }


def test_missing_or_unknown_key_is_401(server: object) -> None:
    base_url: str = server.base_url  # type: ignore[attr-defined]
    assert _http(base_url, "GET", "/api/v1/checkpoints", None)[0] == 401
    assert _http(base_url, "GET", "/api/v1/checkpoints", "tml-nobody")[0] == 401
    assert _http(base_url, "POST", "/api/v1/create_session", "not-even-tml", {"tags": []})[0] == 401
    assert _http(base_url, "GET", "/api/v1/healthz", None)[0] == 200


def test_keys_create_makes_a_key_the_server_accepts(server: object) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(__import__("os").environ, TINSMITH_DATA_DIR=str(server.data_dir))  # type: ignore[attr-defined]
    config = str(ROOT / "configs" / "test.yaml")
    cmd = [
        sys.executable,
        "-m",
        "tinsmith.cluster.cli",
        "keys",
        "create",
        "--config",
        config,
        "--tenant",
        "carol",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    key = done.stdout.strip()
    assert key.startswith("tml-") and len(key) > 30
    status, listing = _http(server.base_url, "GET", "/api/v1/checkpoints", key)  # type: ignore[attr-defined]
    assert status == 200 and listing["checkpoints"] == []  # type: ignore[index]
