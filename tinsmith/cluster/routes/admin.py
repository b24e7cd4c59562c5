"""Health, futures and tinsmith's own status route (not part of Tinker's protocol)."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Response

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.state import State
from tinsmith.types.futures import FutureRetrieveRequest, TryAgainResponse
from tinsmith.types.internal import ModelStatus
from tinsmith.types.requests import HealthResponse

LONG_POLL_SECONDS = 30.0

router = APIRouter(prefix="/api/v1")


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """Liveness (no API key needed)."""
    return HealthResponse()


@router.get("/tinsmith/status")
async def status(state: State) -> list[ModelStatus]:
    """Per base model: its training clients and each worker's memory and adapters. A tenant
    that is not an admin (``auth.admin_tenants``; in open mode the one tenant is) sees only the
    number of its own training clients."""
    tenant = current_tenant()
    if state.auth.mode == "open" or tenant in state.auth.admin_tenants:
        return [await served.coordinator.status() for served in state.models.values()]
    mine = Counter(m.base_model for m in state.clients.training.values() if m.owner == tenant)
    return [
        ModelStatus(base_model=name, training_models=mine[name], workers=[])
        for name in state.models
    ]


@router.post("/retrieve_future")
async def retrieve_future(body: FutureRetrieveRequest, state: State) -> Response:
    """A future's result, or ``try_again`` after a long-poll that saw none."""
    result = await state.futures.retrieve(body.request_id, LONG_POLL_SECONDS, current_tenant())
    if result is None:
        pending = TryAgainResponse(request_id=body.request_id)
        return Response(content=pending.model_dump_json(), media_type="application/json")
    media = "application/x-protobuf" if result.kind == "proto" else "application/json"
    return Response(content=result.body, media_type=media)
