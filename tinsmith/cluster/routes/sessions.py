"""The SDK's handshake and session routes, and what this server can serve."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.state import State
from tinsmith.types.checkpoints import GetServerCapabilitiesResponse, SupportedModel
from tinsmith.types.requests import (
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
)

router = APIRouter(prefix="/api/v1")


@router.post("/client/config")
async def client_config(state: State) -> ClientConfigResponse:
    """Tells the SDK the datum limit, so it chunks forward_backward batches to fit."""
    limits = state.limits
    return ClientConfigResponse(
        fwdbwd_max_chunk_len=limits.max_datums_per_request,
        fwdbwd_max_chunk_bytes_count=min(5_000_000, limits.max_body_bytes // 2),
    )


@router.post("/client/dynamic_config")
async def dynamic_config() -> ClientDynamicConfigResponse:
    """The SDK's defaults."""
    return ClientDynamicConfigResponse()


@router.post("/create_session")
async def create_session(body: CreateSessionRequest, state: State) -> CreateSessionResponse:
    """A new session, owned by the caller's tenant."""
    session_id = f"sess-{uuid.uuid4().hex[:12]}"
    state.store.claim_session(session_id, current_tenant())
    return CreateSessionResponse(session_id=session_id)


@router.post("/session_heartbeat")
async def heartbeat(body: SessionHeartbeatRequest, state: State) -> SessionHeartbeatResponse:
    """Succeeds for the caller's sessions, also those of an earlier server process."""
    if state.store.session_owner(body.session_id) != current_tenant():
        raise HTTPException(status_code=404, detail=f"session_id {body.session_id!r} is unknown")
    state.clients.touch(body.session_id)
    return SessionHeartbeatResponse()


@router.post("/sessions/{session_id}/finish")
async def finish_session(session_id: str) -> dict[str, str]:
    """Accepted; a session holds nothing to free."""
    return {"status": "ok"}


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
