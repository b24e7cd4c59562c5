"""Saving and loading a training client's weights: ``save_weights`` (training state),
``save_weights_for_sampler`` (stored, or synced straight to the samplers),
``save_weights_external``, ``load_weights`` and ``weights_info``.

Saves and loads into an existing client are training requests: they take a seq_id and run in
order with the client's other requests. A save is recorded in the store only after its archive
is verified in storage, so a save that dies midway leaves nothing listed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.checkpoints import KIND_BY_TYPE, check_name, expiry, parse_tinker_path
from tinsmith.cluster.futures import FutureResult
from tinsmith.cluster.registry import SamplerSession, TrainingModel
from tinsmith.cluster.state import CheckpointKind, ServedModel, ServerState, State
from tinsmith.cluster.submission import json_result
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.store.records import CheckpointRecord, utcnow
from tinsmith.types.checkpoints import WeightsInfoResponse
from tinsmith.types.futures import UntypedAPIFuture
from tinsmith.types.internal import CheckpointMeta
from tinsmith.types.requests import (
    LoadWeightsRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    WeightsInfoRequest,
)
from tinsmith.types.training import (
    LoadWeightsResponse,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsResponse,
)

_TYPE_BY_KIND = {v: k for k, v in KIND_BY_TYPE.items()}

router = APIRouter(prefix="/api/v1")


@dataclass(frozen=True)
class _Save:
    """One save request: where it goes and how long it lives."""

    kind: CheckpointKind
    name: str | None
    ttl_seconds: int | None
    overwrite: bool
    user_metadata: dict[str, str] | None


async def _save(
    state: ServerState, model: TrainingModel, served: ServedModel, seq_id: int | None, save: _Save
) -> CheckpointRecord:
    """Validate, write the archive through the coordinator (in seq_id order), then record it."""
    ckpts = state.checkpoints
    try:
        name = check_name(save.name)
        tinker_path = f"tinker://{model.model_id}/{save.kind}/{name}"
        expires_at = expiry(save.ttl_seconds)
        release = ckpts.reserve(tinker_path, save.overwrite)
    except UserInputError as exc:
        await served.coordinator.refuse(model.model_id, seq_id, str(exc))
    try:
        ref = ckpts.new_ref(model.model_id, save.kind, name)
        meta = CheckpointMeta(kind=save.kind, base_model=model.base_model, lora=model.lora)
        saved = await served.coordinator.save_checkpoint(
            model.model_id, seq_id, ref, meta, save.kind == "weights"
        )
        record = CheckpointRecord(
            training_run_id=model.model_id,
            checkpoint_id=f"{save.kind}/{name}",
            checkpoint_type=_TYPE_BY_KIND[save.kind],
            tinker_path=tinker_path,
            owner=model.owner,
            base_model=model.base_model,
            lora=model.lora,
            storage_key=saved.stored.key,
            size_bytes=saved.stored.size_bytes,
            sha256=saved.stored.sha256,
            step=saved.meta.step,
            has_optimizer=saved.meta.has_optimizer,
            expires_at=expires_at,
            user_metadata=save.user_metadata,
        )
        ckpts.commit(record, save.overwrite)
        state.store.touch_run(model.model_id, utcnow())
        return record
    finally:
        release()


@router.post("/save_weights")
async def save_weights(
    body: SaveWeightsRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """Training state (weights and optimizer) to ``tinker://<run>/weights/<name>``."""

    async def work() -> FutureResult:
        model = state.clients.training_model(body.model_id)
        served = state.served(model.base_model)
        save = _Save("weights", body.path, body.ttl_seconds, body.overwrite, body.user_metadata)
        record = await _save(state, model, served, body.seq_id, save)
        return json_result(SaveWeightsResponse(path=record.tinker_path))

    return state.submitter.submit(request, work, model_id=body.model_id)


@router.post("/save_weights_external")
async def save_weights_external(
    body: SaveWeightsExternalRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """The adapter's weights to ``tinker://<run>/external_weights/<name>``, for download."""

    async def work() -> FutureResult:
        model = state.clients.training_model(body.model_id)
        served = state.served(model.base_model)
        if body.age_encryption_recipients:
            message = "age_encryption_recipients is not supported by this server"
            await served.coordinator.refuse(body.model_id, body.seq_id, message)
        save = _Save("external_weights", body.path, body.ttl_seconds, True, None)
        record = await _save(state, model, served, body.seq_id, save)
        return json_result(
            SaveWeightsExternalResponse(path=record.tinker_path, size_bytes=record.size_bytes)
        )

    return state.submitter.submit(request, work, model_id=body.model_id)


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(
    body: SaveWeightsForSamplerRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """A stored sampler checkpoint (with a path), or an ephemeral adapter version synced to
    every sampler replica through Ray's object store (with a sampling_session_seq_id).

    ``kind="inflight"`` (``types.SamplingClientKind``): one mutable target per training
    client; each inflight save moves it, for the clients made by earlier inflight saves too.
    A client never samples weights older than those of the save that made it: the save returns
    only once every replica holds them (stricter than Tinker, whose inflight saves may return
    before), and a target only moves forward. Each version is its own LoRA id to vLLM, so no
    KV cache computed under other weights is reused."""

    async def work() -> FutureResult:
        model = state.clients.training_model(body.model_id)
        served = state.served(model.base_model)
        if body.path is not None:
            save = _Save("sampler_weights", body.path, body.ttl_seconds, False, body.user_metadata)
            record = await _save(state, model, served, body.seq_id, save)
            return json_result(SaveWeightsForSamplerResponseInternal(path=record.tinker_path))
        if body.sampling_session_seq_id is None:
            message = "save_weights_for_sampler needs a path or a sampling_session_seq_id"
            await served.coordinator.refuse(body.model_id, body.seq_id, message)
        sampler_id = f"{model.session_id}:sample:{body.sampling_session_seq_id}"
        key = f"{body.model_id}@{body.seq_id}@{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        await served.coordinator.sync_to_samplers(body.model_id, body.seq_id, key)
        state.metrics.weight_sync.observe(time.perf_counter() - started)
        follows = None
        if body.kind == "inflight":  # this and every earlier inflight client now sample it
            state.clients.publish_inflight(body.model_id, body.seq_id or 0, key)
            follows = body.model_id
        state.clients.add_sampler(
            SamplerSession(sampler_id, model.base_model, None, key, None, model.owner, follows)
        )
        return json_result(SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id))

    return state.submitter.submit(request, work, model_id=body.model_id)


@router.post("/load_weights")
async def load_weights(
    body: LoadWeightsRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """A new training client from a stored training state, or (the older ``load_state`` form,
    with ``model_id``) that state loaded into an existing client."""
    if body.model_id is not None:
        model_id: str = body.model_id

        async def into_existing() -> FutureResult:
            return await _load_into_existing(state, body, model_id)

        return state.submitter.submit(request, into_existing, model_id=model_id)
    if body.session_id is None or body.model_seq_id is None:
        raise UserInputError("load_weights needs session_id and model_seq_id (or model_id)")
    session_id = body.session_id
    new_id = f"{session_id}:train:{body.model_seq_id}"
    state.check_session(session_id)
    state.clients.check_training_capacity(current_tenant())

    async def work() -> FutureResult:
        return await _load_new(state, body, session_id, new_id)

    return state.submitter.submit(request, work, model_id=new_id)


async def _load_new(
    state: ServerState, body: LoadWeightsRequest, session_id: str, model_id: str
) -> FutureResult:
    """Create ``model_id`` with the checkpoint's LoRA config, set from the checkpoint."""
    record = _training_checkpoint(state, body.path)
    base_model = body.base_model or record.base_model
    if base_model != record.base_model:
        raise UserInputError(
            f"base_model {base_model!r} differs from the checkpoint's base model "
            f"{record.base_model!r}"
        )
    if body.optimizer_config is not None and body.optimizer_config.type != "adamw":
        raise UserInputError(
            f"optimizer_config.type {body.optimizer_config.type!r} is not supported; use adamw"
        )
    served = state.served(base_model)
    archive = state.checkpoints.ref_of(record)
    model = TrainingModel(model_id, session_id, base_model, record.lora, current_tenant())
    metadata = {k: str(v) for k, v in (body.user_metadata or {}).items()} or None
    async with state.clients.creating(model, metadata):
        await served.coordinator.create_from_checkpoint(
            model_id, record.lora, archive, body.optimizer
        )
    return json_result(LoadWeightsResponse(path=body.path, model_id=model_id))


async def _load_into_existing(
    state: ServerState, body: LoadWeightsRequest, model_id: str
) -> FutureResult:
    """Set an existing client (same base model and LoRA config) from the checkpoint."""
    model = state.clients.training_model(model_id)
    served = state.served(model.base_model)
    try:
        record = _training_checkpoint(state, body.path)
        if record.base_model != model.base_model:
            raise UserInputError(
                f"path {body.path!r} is a checkpoint of {record.base_model!r}, "
                f"not of {model.base_model!r}"
            )
        if record.lora != model.lora.model_copy(update={"seed": record.lora.seed}):
            raise UserInputError(
                f"path {body.path!r} has LoRA config {record.lora.model_dump()} but this client "
                f"has {model.lora.model_dump()}; create a new client from the state instead"
            )
    except (UserInputError, NotFoundError) as exc:
        await served.coordinator.refuse(model_id, body.seq_id, str(exc))
    archive = state.checkpoints.ref_of(record)
    await served.coordinator.load_checkpoint(model_id, body.seq_id, archive, body.optimizer)
    return json_result(LoadWeightsResponse(path=body.path, model_id=model_id))


def _training_checkpoint(state: ServerState, path: str) -> CheckpointRecord:
    parsed = parse_tinker_path(path)
    if parsed.checkpoint_type != "training":
        raise UserInputError(
            f"path {path!r} is a {parsed.checkpoint_type} checkpoint; training state loads only "
            "from tinker://<run>/weights/<name> (save_state)"
        )
    return state.readable_checkpoint(path)


@router.post("/weights_info")
async def weights_info(body: WeightsInfoRequest, state: State) -> WeightsInfoResponse:
    """The base model and LoRA config of a readable checkpoint."""
    record = state.readable_checkpoint(body.tinker_path, field="tinker_path")
    return WeightsInfoResponse(
        base_model=record.base_model,
        is_lora=True,
        lora_rank=record.lora.rank,
        train_unembed=record.lora.train_unembed,
        train_mlp=record.lora.train_mlp,
        train_attn=record.lora.train_attn,
    )
