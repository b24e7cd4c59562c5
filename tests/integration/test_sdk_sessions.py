"""Sessions through the official SDK: what a client says of its session at creation is kept, and
`RestClient` lists, reads, searches (by metadata, project, status, a page at a time), moves them
to a project and exports their timeline as a trace; each tenant sees only its own (another's
answers as not found)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, OTHER_TENANT_KEY
from tests.integration.helpers import datum

pytestmark = pytest.mark.integration


def _create_session(base_url: str, metadata: dict[str, str]) -> str:
    """A session made as the SDK makes one (its ``create_session`` call)."""
    req = urllib.request.Request(
        f"{base_url}/api/v1/create_session",
        data=json.dumps({"tags": ["t"], "user_metadata": metadata, "sdk_version": "x"}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": "tml-tests"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return str(json.loads(resp.read())["session_id"])


def test_sessions_keep_what_their_client_said_and_each_tenant_sees_its_own(
    server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url = server.base_url  # type: ignore[attr-defined]
    monkeypatch.setenv("TINKER_TAGS", "sessions-test,tinsmith")
    service = tinker.ServiceClient(
        user_metadata={"experiment": "sessions-test", "seed": "7"},
        project_id="proj-a",
        display_name="the sessions test",
        base_url=base_url,
        api_key="tml-tests",
    )
    tc = service.create_lora_training_client(base_model=DEFAULT_MODEL, rank=2).result()
    sampler = service.create_sampling_client(base_model=DEFAULT_MODEL).result()
    session_id = tc.model_id.split(":train:")[0]
    rest = service.create_rest_client()
    for caps in (service.get_server_capabilities(), rest.get_server_capabilities().result()):
        assert DEFAULT_MODEL in [m.model_name for m in caps.supported_models]
    # A sampler passed by handle (to another process, say) is the same sampler.
    monkeypatch.setenv("TINKER_BASE_URL", base_url)
    handle = sampler.get_sampler_handle()
    again = tinker.SamplingClient.from_sampler_handle(handle, api_key="tml-tests")
    assert again.get_base_model() == DEFAULT_MODEL
    prompt = types.ModelInput.from_ints([1, 2, 3])
    assert len(again.sample(prompt, 1, types.SamplingParams(max_tokens=2)).result().sequences) == 1

    got = rest.get_session(session_id).result()
    assert got.training_run_ids == [tc.model_id], got
    [sampler_id] = got.sampler_ids
    assert sampler_id.startswith(f"{session_id}:sample:"), got
    assert rest.get_sampler(sampler_id).result().base_model == DEFAULT_MODEL
    assert got.user_metadata == {"experiment": "sessions-test", "seed": "7"}, got
    assert got.display_name == "the sessions test", got
    assert session_id in rest.list_sessions(limit=200).result().sessions

    # The session's timeline: a slice per request, a track per client (Chrome trace JSON,
    # which Perfetto opens); the link needs no key, as the SDK downloads it.
    tc.forward_backward([datum([1, 2, 3, 4])], "cross_entropy").result()
    url = rest.export_session_trace(session_id).result()
    with urllib.request.urlopen(url, timeout=60) as resp:
        trace = json.loads(resp.read())
    slices = {(e["name"], e["args"]["client"]) for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {("forward_backward", tc.model_id), ("asample", sampler_id)} <= slices, slices
    assert ("create_model", tc.model_id) in slices, slices

    query = types.SessionSearchRequest(user_metadata={"experiment": "sessions-test"})
    [found] = rest.search_sessions(query).result().sessions
    assert found.session_id == session_id and found.project_id == "proj-a", found
    assert found.owner == "tests" and found.status is not None and found.status.type == "active"
    assert found.display_name == "the sessions test" and found.checkpoints_count == 0, found

    # By tag: tinsmith's own filter (SDK 0.38's search has none), in the same JSON body.
    def by_tags(tags: list[str], key: str = "tml-tests") -> list[str]:
        req = urllib.request.Request(
            f"{base_url}/api/v1/sessions/search",
            data=json.dumps({"tags": tags, "limit": 200}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": key},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return [s["session_id"] for s in json.loads(resp.read())["sessions"]]

    assert session_id in by_tags(["sessions-test", "tinsmith"])
    assert session_id not in by_tags(["sessions-test", "no-such-tag"])
    assert session_id not in by_tags(["sessions-test"], OTHER_TENANT_KEY)
    rest.assign_session_project(session_id, "proj-b").result()
    in_b = rest.search_sessions(types.SessionSearchRequest(project_ids=["proj-b"])).result()
    assert [s.session_id for s in in_b.sessions] == [session_id], in_b

    # Paging: three more sessions with one label, two per page, newest first.
    made = [_create_session(base_url, {"page": "yes"}) for _ in range(3)]
    query = types.SessionSearchRequest(user_metadata={"page": "yes"}, limit=2)
    first = rest.search_sessions(query).result()
    assert first.next_cursor is not None and len(first.sessions) == 2, first
    second = rest.search_sessions(query.model_copy(update={"cursor": first.next_cursor})).result()
    assert second.next_cursor is None, second
    assert [s.session_id for s in first.sessions + second.sessions] == made[::-1]

    # Another tenant: nothing of these exists for it.
    other = tinker.RestClient(base_url=base_url, api_key=OTHER_TENANT_KEY)
    with pytest.raises(tinker.NotFoundError):
        other.get_session(session_id).result()
    with pytest.raises(tinker.NotFoundError):
        other.assign_session_project(session_id, "theirs").result()
    with pytest.raises(tinker.NotFoundError):
        other.export_session_trace(session_id).result()
    assert session_id not in other.list_sessions(limit=200).result().sessions
    theirs = types.SessionSearchRequest(user_metadata={"experiment": "sessions-test"})
    assert other.search_sessions(theirs).result().sessions == []
    everyone = types.SessionSearchRequest(
        owner=types.AccessibleSearchOwner(), project_ids=["proj-b"]
    )
    assert other.search_sessions(everyone).result().sessions == []

    # Finished by its client: the first reason given is the one kept.
    service.close("errored", "the test is over").result()  # close() returns a future
    rest = tinker.RestClient(base_url=base_url, api_key="tml-tests")  # the service's is closed
    finished = types.SessionSearchRequest(
        project_ids=["proj-b"],
        statuses=[types.ClientFinishedSessionStatusQuery(reasons=["errored"])],
    )
    [done] = rest.search_sessions(finished).result().sessions
    assert done.status is not None and done.status.type == "client_finished", done
    active = types.SessionSearchRequest(
        project_ids=["proj-b"], statuses=[types.ActiveSessionStatusQuery()]
    )
    assert rest.search_sessions(active).result().sessions == []
