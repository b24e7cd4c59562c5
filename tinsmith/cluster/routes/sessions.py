"""The SDK's handshake and session routes, and what this server can serve."""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.state import State
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.store.records import SessionRecord
from tinsmith.types.checkpoints import GetServerCapabilitiesResponse, SupportedModel
from tinsmith.types.requests import (
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
)
from tinsmith.types.sessions import (
    AssignProjectRequest,
    FinishSessionRequest,
    GetSessionResponse,
    ListSessionsResponse,
    SessionSearchCursor,
    SessionSearchRequest,
    SessionSearchResponse,
)

# What a client may attach to a session (its tags, metadata and names), in all: stored per
# session, so bounded here rather than by the request size alone.
MAX_SESSION_LABEL_BYTES = 64 * 1024

router = APIRouter(prefix="/api/v1")


@router.post("/client/config")
async def client_config(state: State) -> ClientConfigResponse:
    """Tells the SDK the datum limit, so it chunks forward_backward batches to fit, and
    whether to trade its key for JWTs (``auth.issue_jwts``)."""
    limits = state.limits
    return ClientConfigResponse(
        pjwt_auth_enabled=state.auth.issue_jwts,
        fwdbwd_max_chunk_len=limits.max_datums_per_request,
        fwdbwd_max_chunk_bytes_count=min(5_000_000, limits.max_body_bytes // 2),
    )


@router.post("/client/dynamic_config")
async def dynamic_config() -> ClientDynamicConfigResponse:
    """The SDK's defaults."""
    return ClientDynamicConfigResponse()


@router.post("/create_session")
async def create_session(body: CreateSessionRequest, state: State) -> CreateSessionResponse:
    """A new session, owned by the caller's tenant, with the tags, metadata, project and name
    its client sent (``TINKER_TAGS``, ``TINKER_PROJECT_ID``...)."""
    metadata = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in (body.user_metadata or {}).items()
    }
    record = SessionRecord(
        session_id=f"sess-{uuid.uuid4().hex[:12]}",
        owner=current_tenant(),
        tags=body.tags,
        user_metadata=metadata or None,
        project_id=body.project_id,
        display_name=body.display_name,
    )
    size = len(record.model_dump_json())
    if size > MAX_SESSION_LABEL_BYTES:
        raise UserInputError(
            f"create_session: tags, user_metadata, project_id and display_name take {size} bytes "
            f"together, more than the {MAX_SESSION_LABEL_BYTES} a session may keep"
        )
    state.store.put_session(record)
    return CreateSessionResponse(session_id=record.session_id)


@router.post("/session_heartbeat")
async def heartbeat(body: SessionHeartbeatRequest, state: State) -> SessionHeartbeatResponse:
    """Succeeds for the caller's sessions, also those of an earlier server process."""
    if state.store.session_owner(body.session_id) != current_tenant():
        raise NotFoundError(f"session {body.session_id!r} does not exist")
    state.clients.touch(body.session_id)
    return SessionHeartbeatResponse()


@router.post("/sessions/{session_id}/finish")
async def finish_session(
    session_id: str, state: State, body: FinishSessionRequest | None = None
) -> dict[str, str]:
    """The client is done (``ServiceClient.close``): the session is recorded as finished, with
    the reason it gave first. Its training clients stay loaded until the session timeout."""
    record = state.owned_session(session_id)
    if record.state == "client_finished":
        return {"status": "ok"}  # the first reason given stands
    body = body or FinishSessionRequest()
    record.state, record.finish_reason, record.detail = (
        "client_finished",
        body.reason.type,
        body.detail,
    )
    state.store.update_session(record)
    return {"status": "ok"}


@router.get("/sessions")
async def list_sessions(state: State, limit: int = 20, offset: int = 0) -> ListSessionsResponse:
    """The caller's session ids, newest first (``access_scope`` is accepted and changes
    nothing: a tenant only ever sees its own)."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise UserInputError(f"limit must be 1..1000 and offset >= 0, got {limit} and {offset}")
    records = state.store.list_sessions(current_tenant(), limit, offset)
    return ListSessionsResponse(sessions=[r.session_id for r in records])


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, state: State) -> GetSessionResponse:
    """A session's training runs and sampling sessions, metadata and name."""
    record = state.owned_session(session_id)
    return GetSessionResponse(
        training_run_ids=state.store.session_runs(session_id),
        sampler_ids=state.store.session_samplers(session_id),
        user_metadata=record.user_metadata,
        display_name=record.display_name,
    )


@router.put("/sessions/{session_id}/project")
async def assign_project(
    session_id: str, body: AssignProjectRequest, state: State
) -> dict[str, str]:
    """Move a session to a project (searchable by ``project_ids``)."""
    record = state.owned_session(session_id)
    record.project_id = body.project_id
    state.store.update_session(record)
    return {"status": "ok"}


@router.post("/sessions/search")
async def search_sessions(body: SessionSearchRequest, state: State) -> SessionSearchResponse:
    """The caller's sessions that match every filter given, newest first, a page at a time."""
    tenant = current_tenant()
    if body.owner.type == "user" and tenant not in body.owner.owner_urns:
        return SessionSearchResponse(sessions=[])
    before = (body.cursor.last_created_at, body.cursor.last_session_id) if body.cursor else None
    matches: list[SessionRecord] = []
    batch = 500
    while len(matches) <= body.limit:
        records = state.store.list_sessions(tenant, batch, 0, before)
        matches += [r for r in records if _matches(r, body)]
        if len(records) < batch:
            break
        before = (records[-1].created_at, records[-1].session_id)
    page = matches[: body.limit]
    more = len(matches) > body.limit
    return SessionSearchResponse(
        sessions=[r.summary(*state.store.session_checkpoints(r.session_id)) for r in page],
        next_cursor=(
            SessionSearchCursor(
                last_created_at=page[-1].created_at, last_session_id=page[-1].session_id
            )
            if more
            else None
        ),
    )


def _matches(record: SessionRecord, query: SessionSearchRequest) -> bool:
    if query.session_id is not None and record.session_id != query.session_id:
        return False
    if query.project_ids is not None and record.project_id not in query.project_ids:
        return False
    if query.display_name is not None and query.display_name not in (record.display_name or ""):
        return False
    metadata = record.user_metadata or {}
    if any(metadata.get(k) != v for k, v in query.user_metadata.items()):
        return False
    if query.tags is not None and not set(query.tags) <= set(record.tags):
        return False
    if query.statuses is not None:
        return any(
            status.type == record.state
            and (status.reasons is None or record.finish_reason in status.reasons)
            for status in query.statuses
        )
    return True


@router.post("/telemetry")
async def telemetry() -> dict[str, str]:
    """Accepted and dropped."""
    return {"status": "accepted"}


@router.get("/get_server_capabilities")
async def capabilities(state: State) -> GetServerCapabilitiesResponse:
    """The base models served here."""
    return GetServerCapabilitiesResponse(
        supported_models=[
            SupportedModel(
                model_name=m.name,
                max_context_length=m.max_context_length,
                trainable=m.trainable,
                sampleable=m.sampleable,
            )
            for m in state.models.values()
        ]
    )
