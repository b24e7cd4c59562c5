"""Training-client routes: create, describe and unload a client, forward_backward, optim_step.

Each mutating route returns a future at once; its work runs on the base model's coordinator, in
the client's seq_id order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.futures import FutureResult
from tinsmith.cluster.images import read_datum_images
from tinsmith.cluster.limits import check_forward_backward
from tinsmith.cluster.provenance import check_provenance
from tinsmith.cluster.registry import TrainingModel
from tinsmith.cluster.state import ServerState, State
from tinsmith.cluster.submission import json_result
from tinsmith.errors import NotFoundError, TooLargeError, UserInputError
from tinsmith.store.records import MetricKind
from tinsmith.types import proto
from tinsmith.types.futures import UntypedAPIFuture
from tinsmith.types.requests import (
    CreateModelRequest,
    ForwardBackwardRequest,
    GetInfoRequest,
    OptimStepRequest,
    UnloadModelRequest,
)
from tinsmith.types.training import (
    AdamParams,
    CreateModelResponse,
    GetInfoResponse,
    LoraConfig,
    ModelData,
    OptimStepResponse,
    UnloadModelResponse,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")


@router.post("/create_model")
async def create_model(
    body: CreateModelRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """A new training client with a fresh LoRA adapter on the base model's trainer ranks."""
    model_id = f"{body.session_id}:train:{body.model_seq_id}"
    state.check_session(body.session_id)
    state.clients.check_training_capacity(current_tenant())  # 429 at once, not in the future

    async def work() -> FutureResult:
        served = state.served(body.base_model)
        if body.optimizer_config.type != "adamw":
            raise UserInputError(
                f"optimizer_config.type {body.optimizer_config.type!r} is not supported; use adamw"
            )
        lora = body.lora_config or LoraConfig(rank=32)
        if served.sampleable and lora.rank > served.max_lora_rank:
            raise UserInputError(
                f"lora_config.rank {lora.rank} is larger than this server's sampler limit "
                f"({served.max_lora_rank}, sampler.max_lora_rank in the config)"
            )
        model = TrainingModel(model_id, body.session_id, body.base_model, lora, current_tenant())
        metadata = {k: str(v) for k, v in (body.user_metadata or {}).items()} or None
        async with state.clients.creating(model, metadata):
            await served.coordinator.create_model(model_id, lora)
        return json_result(CreateModelResponse(model_id=model_id))

    return state.submitter.submit(request, work, model_id=model_id)


@router.post("/get_info")
async def get_info(body: GetInfoRequest, state: State) -> GetInfoResponse:
    """The client's base model, tokenizer and LoRA rank."""
    model = state.clients.training_model(body.model_id)
    served = state.served(model.base_model)
    return GetInfoResponse(
        model_id=model.model_id,
        # The public name: prepare put the tokenizer in the HF cache under it, and /hf serves it.
        model_data=ModelData(
            arch=served.arch.model_type, model_name=model.base_model, tokenizer_id=served.name
        ),
        is_lora=True,
        lora_rank=model.lora.rank,
        model_name=model.base_model,
    )


@router.post("/unload_model")
async def unload_model(
    body: UnloadModelRequest, request: Request, state: State
) -> UntypedAPIFuture:
    """Free the client's adapter and optimizer state."""

    async def work() -> FutureResult:
        model = state.clients.training_model(body.model_id)
        await state.served(model.base_model).coordinator.unload_model(body.model_id)
        state.clients.remove_training(body.model_id)
        return json_result(UnloadModelResponse(model_id=body.model_id))

    return state.submitter.submit(request, work, model_id=body.model_id)


@router.post("/forward_backward")
async def forward_backward(request: Request, state: State) -> UntypedAPIFuture:
    """A protobuf (optionally zstd) batch of datums; the future resolves to protobuf outputs."""
    raw = await request.body()
    zstd = request.headers.get("content-encoding", "") == "zstd"
    # Decompressing and decoding a large batch takes CPU and memory: off the event loop, and
    # only limits.max_concurrent_decodes at once.
    async with state.decode_slots:
        fb = await asyncio.to_thread(_decode, raw, zstd, state.limits.max_decompressed_bytes)
    try:
        check_forward_backward(fb.forward_backward_input, state.limits)
    except TooLargeError as exc:
        _consume_turn(state, fb, str(exc))
        raise

    async def work() -> FutureResult:
        model = state.clients.training_model(fb.model_id)
        served = state.served(model.base_model)
        batch = fb.forward_backward_input
        if any(d.model_input_spans or d.loss_fn_input_spans for d in batch.data):
            try:
                await asyncio.to_thread(
                    check_provenance, batch, _sequence_owner_of(state), current_tenant()
                )
            except UserInputError as exc:  # consumes the seq_id, in order
                await served.coordinator.refuse(fb.model_id, fb.seq_id, str(exc))
        if any(d.model_input.images for d in batch.data):
            try:
                batch = await asyncio.to_thread(
                    read_datum_images, batch, state.images, served.image_tokens, state.limits
                )
            except UserInputError as exc:  # consumes the seq_id, in order
                await served.coordinator.refuse(fb.model_id, fb.seq_id, str(exc))
        out = await served.coordinator.forward_backward(
            fb.model_id, fb.seq_id, batch, fb.forward_only
        )
        state.metrics.train_tokens.labels(model.base_model).inc(
            out.metrics.get("num_tokens:sum", 0.0)
        )
        kind: MetricKind = "forward" if fb.forward_only else "forward_backward"
        await state.record_metrics(fb.model_id, kind, out.metrics)
        return FutureResult(kind="proto", body=proto.encode_forward_backward_output(out))

    return state.submitter.submit(request, work, model_id=fb.model_id)


@router.post("/optim_step")
async def optim_step(body: OptimStepRequest, request: Request, state: State) -> UntypedAPIFuture:
    """One AdamW step over the gradients accumulated since the last."""

    async def work() -> FutureResult:
        model = state.clients.training_model(body.model_id)
        served = state.served(model.base_model)
        if body.optimizer_params is not None:
            message = "optimizer_params (dimuon) is not supported; send adam_params"
            await served.coordinator.refuse(body.model_id, body.seq_id, message)
        adam = body.adam_params or AdamParams()
        metrics = await served.coordinator.optim_step(body.model_id, body.seq_id, adam)
        await state.record_metrics(body.model_id, "optim_step", metrics)
        return json_result(OptimStepResponse(metrics=metrics))

    return state.submitter.submit(request, work, model_id=body.model_id)


def _sequence_owner_of(state: ServerState) -> Callable[[str], str | None]:
    """A sequence id's owner: as recorded (``record_stability_info``), else its request's."""

    def owner(sequence_id: str) -> str | None:
        recorded = state.store.sequence_owner(sequence_id)
        if recorded is not None:
            return recorded
        found = state.store.get_future(sequence_id.rpartition(":")[0])
        return None if found is None else found[0]

    return owner


_REFUSALS: set[asyncio.Task[None]] = set()  # refusals under way (a task needs a reference)


def _consume_turn(state: ServerState, fb: ForwardBackwardRequest, message: str) -> None:
    """A request refused with a 4xx still takes its seq_id's turn in the background: the
    client's later requests are numbered after it and would otherwise wait for it forever."""
    try:
        model = state.clients.training_model(fb.model_id)
    except NotFoundError:  # no such client of this tenant: no turns to keep
        return
    coordinator = state.served(model.base_model).coordinator

    async def refuse() -> None:
        try:
            await coordinator.refuse(fb.model_id, fb.seq_id, message)
        except UserInputError:  # what refuse raises once the turn is taken
            pass
        except Exception:
            log.exception("could not give seq_id %s of %s its turn", fb.seq_id, fb.model_id)

    task = asyncio.ensure_future(refuse())
    _REFUSALS.add(task)
    task.add_done_callback(_REFUSALS.discard)


def _decode(raw: bytes, zstd: bool, max_bytes: int) -> ForwardBackwardRequest:
    """The request, from its (optionally zstd) protobuf body; a bad body is a 400."""
    if zstd:
        raw = _unzstd(raw, max_bytes)
    try:
        return proto.decode_forward_backward_request(raw)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def _unzstd(raw: bytes, max_bytes: int) -> bytes:
    """Decompress a zstd request body, refusing garbage (400) and anything over ``max_bytes``
    (413: ``limits.max_decompressed_bytes``), whether or not its frame header says its size."""
    import zstandard

    too_large = HTTPException(
        status_code=413,
        detail=f"body decompresses to over limits.max_decompressed_bytes = {max_bytes} bytes",
    )
    try:
        if zstandard.frame_content_size(raw) > max_bytes:  # -1 when the header does not say
            raise too_large
        # Counted first, in pieces that are dropped as they come, so a body without its size in
        # the header stops at the limit having held a few MiB at most...
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        seen = 0
        while seen <= max_bytes and (more := reader.read(min(4 << 20, max_bytes + 1 - seen))):
            seen += len(more)
        if seen > max_bytes:
            raise too_large
        # ...then whole, which also refuses a truncated or corrupt frame.
        out: bytes = zstandard.ZstdDecompressor().decompress(raw, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise HTTPException(status_code=400, detail=f"body is not valid zstd data: {exc}") from exc
    return out
