"""Sampling routes: sampling sessions (of a base model or a stored checkpoint) and ``asample``.

A sample request is checked against the model's vocabulary and context
(``tinsmith.cluster.sample_requests``), so a bad one gets a 400 naming the field instead of
reaching a sampler replica.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.futures import FutureResult
from tinsmith.cluster.images import check_image_count, resolve_images
from tinsmith.cluster.registry import SamplerSession
from tinsmith.cluster.sample_requests import checkpoint_sampler, sample_work, sampler_for
from tinsmith.cluster.state import State
from tinsmith.errors import UserInputError
from tinsmith.types import proto
from tinsmith.types.futures import UntypedAPIFuture
from tinsmith.types.requests import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    SampleRequest,
)
from tinsmith.types.sampling import GetSamplerResponse

router = APIRouter(prefix="/api/v1")


@router.post("/create_sampling_session")
async def create_sampling_session(
    body: CreateSamplingSessionRequest, state: State
) -> CreateSamplingSessionResponse:
    """A sampling session of a stored checkpoint (``model_path``) or of a bare base model."""
    sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"
    state.check_session(body.session_id)  # another tenant's session answers as unknown
    if body.model_path is not None:
        state.clients.add_sampler(checkpoint_sampler(state, body.model_path, sampler_id))
    elif body.base_model is not None:
        state.served(body.base_model)
        state.clients.add_sampler(
            SamplerSession(sampler_id, body.base_model, None, None, None, current_tenant())
        )
    else:
        raise UserInputError("create_sampling_session needs model_path or base_model")
    return CreateSamplingSessionResponse(sampling_session_id=sampler_id)


@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, state: State) -> GetSamplerResponse:
    """What a sampling session samples."""
    session = state.clients.sampler(sampler_id)
    return GetSamplerResponse(
        sampler_id=sampler_id, base_model=session.base_model, model_path=session.model_path
    )


@router.post("/asample")
async def asample(body: SampleRequest, request: Request, state: State) -> UntypedAPIFuture:
    """Sample from a session, a checkpoint or a base model; the future resolves to protobuf."""
    session = sampler_for(state, body)
    served = state.served(session.base_model)
    prompt = body.prompt
    if prompt.images:
        check_image_count([prompt], state.images.config, "prompt")
        prompt = await asyncio.to_thread(
            resolve_images, prompt, "prompt", state.images, served.image_tokens
        )
    work_item = sample_work(body, prompt, session, served)

    async def work() -> FutureResult:
        out = await served.coordinator.sample(work_item, session.source)
        state.metrics.sampled_tokens.labels(session.base_model).inc(
            sum(len(q.tokens) for q in out.sequences)
        )
        return FutureResult(kind="proto", body=proto.encode_sample_response(out))

    future = state.submitter.submit(
        request,
        work,
        n_samples=body.num_samples,
        base_model=session.base_model,
        client_id=session.sampler_id or None,  # "" samples a checkpoint or model directly
    )
    if body.record_stability_info and future.sample_sequence_ids:
        await asyncio.to_thread(
            state.store.record_sequences,
            future.sample_sequence_ids,
            current_tenant(),
            session.session_id,
        )
    return future
