"""REST routes over stored training runs and checkpoints: listings (``Cursor`` pagination),
delete, publish/unpublish, TTL, download links and the signed download route itself.

They read only the metadata store (see ``tinsmith.cluster.checkpoints`` for the visibility rules):
a tenant sees its own runs and checkpoints, and published checkpoints of others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.state import CheckpointKind as Kind
from tinsmith.cluster.state import ServerState, State
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.store.records import (
    CheckpointRecord,
    RunRecord,
    SessionRecord,
    run_to_wire,
    utcnow,
)
from tinsmith.types.archives import safe_name
from tinsmith.types.checkpoints import (
    CheckpointArchiveUrlResponse,
    CheckpointsListResponse,
    Cursor,
    ExternalWeightsUrlsResponse,
    TrainingRun,
    TrainingRunsResponse,
)
from tinsmith.types.requests import CheckpointTtlRequest, CopyWeightsRequest, CopyWeightsResponse

router = APIRouter(prefix="/api/v1")
_CHECKPOINT = "/training_runs/{run_id}/checkpoints/{kind}/{name}"


def _run_to_wire(state: ServerState, run: RunRecord) -> TrainingRun:
    return run_to_wire(
        run,
        state.store.latest_checkpoint(run.training_run_id, "training"),
        state.store.latest_checkpoint(run.training_run_id, "sampler"),
    )


@router.get("/training_runs")
async def list_training_runs(
    state: State,
    limit: int = Query(default=20, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=2**62),
) -> TrainingRunsResponse:
    """The caller's training runs, newest first."""
    runs, total = state.store.list_runs(current_tenant(), limit, offset)
    return TrainingRunsResponse(
        training_runs=[_run_to_wire(state, r) for r in runs],
        cursor=Cursor(offset=offset, limit=limit, total_count=total),
    )


@router.get("/training_runs/{run_id}")
async def get_training_run(run_id: str, state: State) -> TrainingRun:
    """One of the caller's training runs, with its latest checkpoints."""
    return _run_to_wire(state, state.owned_run(run_id))


@router.get("/training_runs/{run_id}/checkpoints")
async def list_run_checkpoints(
    run_id: str,
    state: State,
    limit: int = Query(default=1000, ge=1, le=10000),
    offset: int = Query(default=0, ge=0, le=2**62),
) -> CheckpointsListResponse:
    """The checkpoints of one of the caller's runs."""
    state.owned_run(run_id)
    records, total = state.checkpoints.list(run_id, current_tenant(), limit, offset)
    return CheckpointsListResponse(
        checkpoints=[r.to_wire() for r in records],
        cursor=Cursor(offset=offset, limit=limit, total_count=total),
    )


@router.get("/checkpoints")
async def list_user_checkpoints(
    state: State,
    limit: int = Query(default=100, ge=1, le=10000),
    offset: int = Query(default=0, ge=0, le=2**62),
) -> CheckpointsListResponse:
    """Every checkpoint the caller can see."""
    records, total = state.checkpoints.list(None, current_tenant(), limit, offset)
    return CheckpointsListResponse(
        checkpoints=[r.to_wire() for r in records],
        cursor=Cursor(offset=offset, limit=limit, total_count=total),
    )


@router.delete(_CHECKPOINT)
async def delete_checkpoint(run_id: str, kind: Kind, name: str, state: State) -> dict[str, str]:
    """Remove the record, then the stored object (owner only), off the event loop (a slow
    object store must not hold up other requests)."""
    record = state.owned_checkpoint(run_id, f"{kind}/{name}")
    await asyncio.to_thread(state.checkpoints.delete, record)
    return {"status": "deleted"}


@router.post(_CHECKPOINT + "/publish")
async def publish(run_id: str, kind: Kind, name: str, state: State) -> dict[str, str]:
    """Make the checkpoint readable and loadable by every tenant (owner only)."""
    state.checkpoints.set_public(state.owned_checkpoint(run_id, f"{kind}/{name}"), True)
    return {"status": "published"}


@router.delete(_CHECKPOINT + "/publish")
async def unpublish(run_id: str, kind: Kind, name: str, state: State) -> dict[str, str]:
    """Make the checkpoint private again (owner only)."""
    state.checkpoints.set_public(state.owned_checkpoint(run_id, f"{kind}/{name}"), False)
    return {"status": "unpublished"}


@router.put(_CHECKPOINT + "/ttl")
async def set_ttl(
    run_id: str, kind: Kind, name: str, body: CheckpointTtlRequest, state: State
) -> dict[str, str]:
    """Set or clear the checkpoint's expiry (owner only)."""
    state.checkpoints.set_ttl(state.owned_checkpoint(run_id, f"{kind}/{name}"), body.ttl_seconds)
    return {"status": "ok"}


@router.get(_CHECKPOINT + "/external_weights_urls")
async def external_weights_urls(
    run_id: str, kind: Kind, name: str, request: Request, state: State
) -> ExternalWeightsUrlsResponse:
    """A signed, expiring link per file of the checkpoint (what ``tinker checkpoint download``
    fetches)."""
    record = state.readable_checkpoint(f"tinker://{run_id}/{kind}/{name}", field="checkpoint")
    if kind == "sampler_weights":
        raise UserInputError(
            "sampler checkpoints cannot be downloaded; save_state() or save_weights_external()"
        )
    expires = utcnow() + dt.timedelta(seconds=state.storage_config.url_expiry_seconds)
    files = await _files_of(state, record)
    base = str(request.base_url).rstrip("/")
    sign, tenant = state.checkpoints.sign, current_tenant()
    urls = {f: f"{base}/api/v1/tinsmith/files/{sign(record, f, expires, tenant)}" for f in files}
    return ExternalWeightsUrlsResponse(urls=urls, expires=expires)


@router.get(_CHECKPOINT + "/archive")
async def archive_url(
    run_id: str, kind: Kind, name: str, request: Request, state: State
) -> CheckpointArchiveUrlResponse:
    """One-file download of the whole archive: a presigned S3 URL, or one this server answers."""
    record = state.readable_checkpoint(f"tinker://{run_id}/{kind}/{name}", field="checkpoint")
    url, expires = state.checkpoints.download_link(record, current_tenant(), str(request.base_url))
    return CheckpointArchiveUrlResponse(url=url, expires=expires)


@router.get("/tinsmith/files/{token}")
async def download_file(token: str, state: State) -> FileResponse:
    """Signed download links (no API key: the token is the credential, like a presigned URL)."""
    from tinsmith.storage.transfer import fetch_dir

    ckpts = state.checkpoints
    record, filename = ckpts.verify(token)
    if filename is None:
        local = ckpts.storage.local_path(record.storage_key)
        if local is None:
            raise NotFoundError("archive is not stored on this server")
        return FileResponse(local, filename=f"{safe_name(record.checkpoint_id)}.tar")
    directory = await asyncio.to_thread(fetch_dir, ckpts.site, ckpts.ref_of(record))
    path = (directory / filename).resolve()
    if not path.is_file() or not path.is_relative_to(directory.resolve()):
        raise NotFoundError(f"{filename!r} is not a file of {record.tinker_path}")
    return FileResponse(path, filename=path.name)


async def _files_of(state: ServerState, record: CheckpointRecord) -> list[str]:
    from tinsmith.storage.transfer import fetch_dir

    ckpts = state.checkpoints
    directory = await asyncio.to_thread(fetch_dir, ckpts.site, ckpts.ref_of(record))
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


# A copy's TTL, if it has one: from an hour to ten years (the SDK's documented range).
COPY_TTL_SECONDS = (3600, 10 * 365 * 24 * 3600)


@router.post("/copy_weights")
async def copy_weights(
    body: CopyWeightsRequest,
    state: State,
    idempotency_key: Annotated[
        str | None, Header(alias="X-Idempotency-Key", max_length=256)
    ] = None,
) -> CopyWeightsResponse:
    """Copy a checkpoint the caller may read (its own, or a published one) into a training run
    of its own that is never trained: in a new session of ``destination_project_id``, or as
    ``<session_id>:train:<model_seq_id>`` in one of its sessions. The copy shares the source's
    archive (no bytes are written) and outlives the source's deletion or expiry. A retry with
    the same ``X-Idempotency-Key`` returns the same copy."""
    source = state.readable_checkpoint(body.source_path, "source_path")
    ttl = body.ttl_seconds
    if ttl is not None and not COPY_TTL_SECONDS[0] <= ttl <= COPY_TTL_SECONDS[1]:
        raise UserInputError(
            f"ttl_seconds must be in {COPY_TTL_SECONDS[0]}..{COPY_TTL_SECONDS[1]} (or null for "
            f"no expiry), got {ttl}"
        )
    session_id, run_id = _copy_destination(state, body, source, idempotency_key)
    run = state.store.get_run(run_id) or RunRecord(
        training_run_id=run_id,
        session_id=session_id,
        base_model=source.base_model,
        owner=current_tenant(),
        lora=source.lora,
        user_metadata={"copied_from": source.tinker_path},
    )
    return CopyWeightsResponse(tinker_path=state.checkpoints.copy(source, run, ttl))


def _copy_destination(
    state: ServerState,
    body: CopyWeightsRequest,
    source: CheckpointRecord,
    idempotency_key: str | None,
) -> tuple[str, str]:
    """The session and run id a copy goes to: the caller's named ones, or a new session of the
    destination project (the same one for a retry with the same idempotency key)."""
    tenant = current_tenant()
    if body.session_id is not None:
        if body.model_seq_id is None:
            raise UserInputError("copy_weights: session_id needs model_seq_id (or neither)")
        state.check_session(body.session_id)
        run_id = f"{body.session_id}:train:{body.model_seq_id}"
        existing = state.store.get_run(run_id)
        if existing is not None and existing.owner != tenant:
            raise NotFoundError(f"training run {run_id!r} does not exist")
        return body.session_id, run_id
    if not body.destination_project_id:
        raise UserInputError(
            "copy_weights needs destination_project_id, or session_id and model_seq_id"
        )
    token = (
        hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()
        if idempotency_key
        else uuid.uuid4().hex
    )
    session_id = f"sess-{token[:12]}"
    owner = state.store.put_session(
        SessionRecord(
            session_id=session_id,
            owner=tenant,
            project_id=body.destination_project_id,
            display_name=f"copy of {source.tinker_path}",
        )
    )
    if owner != tenant:
        raise UserInputError("X-Idempotency-Key: choose another key")
    return session_id, f"{session_id}:train:0"
