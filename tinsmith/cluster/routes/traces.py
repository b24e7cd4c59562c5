"""``export_session_trace``: a signed link to a session's timeline (``request_spans``), as the
SDK and ``tinker session export-trace`` fetch it. The link needs no API key (the SDK downloads
it with a plain GET) and lasts ``storage.url_expiry_seconds``; the trace is built when the link
is followed, so it holds every request up to then."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.jwt_tokens import InvalidToken, JwtIssuer
from tinsmith.cluster.request_spans import chrome_trace
from tinsmith.cluster.state import ServerState, State
from tinsmith.errors import NotFoundError
from tinsmith.types.sessions import SessionTraceExportResponse

TRACE_LINKS = "/api/v1/tinsmith/traces/"  # public: the token is the credential

router = APIRouter(prefix="/api/v1")


def _links(state: ServerState) -> JwtIssuer:
    seconds = state.storage_config.url_expiry_seconds
    return JwtIssuer(state.checkpoints.derived_secret("trace links"), seconds)


@router.get("/sessions/{session_id}/trace_export")
async def trace_export(
    session_id: str, request: Request, state: State
) -> SessionTraceExportResponse:
    """The caller's own session only; another tenant's answers as unknown."""
    state.owned_session(session_id)
    token = _links(state).issue(current_tenant(), session=session_id)
    base = str(request.base_url).rstrip("/")
    return SessionTraceExportResponse(status="ready", url=f"{base}{TRACE_LINKS}{token}")


@router.get("/tinsmith/traces/{token}")
async def download_trace(token: str, state: State) -> Response:
    """The trace a link names, while its session is still its tenant's."""
    try:
        claims = _links(state).claims(token)
    except InvalidToken as exc:
        raise NotFoundError(f"trace link: {exc}") from exc
    session_id = str(claims.get("session", ""))
    record = state.store.get_session(session_id)
    if record is None or record.owner != claims["tenant"]:
        raise NotFoundError("the session of this trace link no longer exists")
    spans = state.submitter.spans.spans(session_id)
    body = await asyncio.to_thread(chrome_trace, session_id, spans)
    disposition = f'attachment; filename="{session_id}.pftrace"'
    return Response(
        body, media_type="application/json", headers={"Content-Disposition": disposition}
    )
