"""Sampling routes: sampling sessions (of a base model or a stored checkpoint) and ``asample``.

A sample request is checked against the model's vocabulary and context here, so a bad one gets
a 400 naming the field instead of reaching a sampler replica.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.checkpoints import parse_tinker_path
from tinsmith.cluster.futures import FutureResult
from tinsmith.cluster.images import check_image_count, resolve_images
from tinsmith.cluster.registry import SamplerSession
from tinsmith.cluster.state import ServedModel, ServerState, State
from tinsmith.errors import UserInputError
from tinsmith.types import proto
from tinsmith.types.data import ImagePlacement, ModelInput
from tinsmith.types.futures import UntypedAPIFuture
from tinsmith.types.internal import AdapterSource, SampleWork
from tinsmith.types.requests import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    SampleRequest,
)
from tinsmith.types.sampling import GetSamplerResponse

MAX_NUM_SAMPLES = 128  # per request; more rollouts go in more requests
MAX_TOPK_LOGPROBS = 20  # vLLM's default max_logprobs

router = APIRouter(prefix="/api/v1")


@router.post("/create_sampling_session")
async def create_sampling_session(
    body: CreateSamplingSessionRequest, state: State
) -> CreateSamplingSessionResponse:
    """A sampling session of a stored checkpoint (``model_path``) or of a bare base model."""
    sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"
    state.check_session(body.session_id)  # another tenant's session answers as unknown
    if body.model_path is not None:
        state.clients.add_sampler(_checkpoint_sampler(state, body.model_path, sampler_id))
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
    session = _sampler_for(state, body)
    served = state.served(session.base_model)
    prompt = body.prompt
    if prompt.images:
        check_image_count([prompt], state.images.config, "prompt")
        prompt = await asyncio.to_thread(
            resolve_images, prompt, "prompt", state.images, served.image_tokens
        )
    work_item = _sample_work(body, prompt, session, served)

    async def work() -> FutureResult:
        out = await served.coordinator.sample(work_item, session.source)
        state.metrics.sampled_tokens.labels(session.base_model).inc(
            sum(len(q.tokens) for q in out.sequences)
        )
        return FutureResult(kind="proto", body=proto.encode_sample_response(out))

    return state.submitter.submit(
        request, work, n_samples=body.num_samples, base_model=session.base_model
    )


def _sampler_for(state: ServerState, body: SampleRequest) -> SamplerSession:
    if body.sampling_session_id is not None:
        return state.clients.sampler(body.sampling_session_id)
    if body.model_path is not None:
        return _checkpoint_sampler(state, body.model_path, "")
    if body.base_model is not None:
        state.served(body.base_model)
        return SamplerSession("", body.base_model, None, None, None, current_tenant())
    raise UserInputError("asample needs sampling_session_id, model_path or base_model")


def _checkpoint_sampler(state: ServerState, model_path: str, sampler_id: str) -> SamplerSession:
    """Sampling from a stored checkpoint (sampler_weights, or the adapter inside weights).

    The adapter key includes the archive's hash, so an overwritten checkpoint is a new adapter
    to vLLM rather than a stale cached one.
    """
    parsed = parse_tinker_path(model_path, "model_path")
    if parsed.checkpoint_type == "external":
        raise UserInputError(
            f"model_path {model_path!r}: sample from sampler_weights or weights checkpoints"
        )
    record = state.readable_checkpoint(model_path, field="model_path")
    source = AdapterSource(archive=state.checkpoints.ref_of(record))
    key = f"{model_path}@{record.sha256[:12]}"
    return SamplerSession(sampler_id, record.base_model, model_path, key, source, current_tenant())


def _sample_work(
    body: SampleRequest, prompt: ModelInput, session: SamplerSession, served: ServedModel
) -> SampleWork:
    """Validate a sample request (its ``prompt`` with images read) against the model's limits;
    errors name the field."""
    max_context = served.max_context_length
    tokens, images = _prompt_tokens(prompt, max_context, served.vocab_size, served.image_token_id)
    _check_sampling(body)
    params = body.sampling_params
    room = max_context - len(tokens)
    stop_strings, stop_ids = _stop_lists(params.stop)
    return SampleWork(
        prompt_tokens=tokens,
        num_samples=body.num_samples,
        max_tokens=min(params.max_tokens or room, room),
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop_strings=stop_strings,
        stop_token_ids=stop_ids,
        prompt_logprobs=bool(body.prompt_logprobs),
        topk_prompt_logprobs=body.topk_prompt_logprobs,
        topk_sample_logprobs=body.topk_sample_logprobs,
        adapter_key=session.adapter_key,
        images=images,
    )


def _prompt_tokens(
    prompt: ModelInput, max_context: int, vocab_size: int, image_token_id: int | None
) -> tuple[list[int], list[ImagePlacement]]:
    """The prompt's token ids (an image's as placeholders) and images: not empty, inside the
    vocabulary, shorter than the context."""
    try:
        tokens, images = prompt.to_tokens(image_token_id)
    except ValueError as exc:
        raise UserInputError(f"prompt: {exc}") from exc
    if not tokens:
        raise UserInputError("prompt is empty")
    if len(tokens) >= max_context:  # before any per-token work on a huge prompt
        raise UserInputError(
            f"prompt has {len(tokens)} tokens; the model's context is {max_context}"
        )
    if not 0 <= min(tokens) <= max(tokens) < vocab_size:
        pos, tok = next((i, t) for i, t in enumerate(tokens) if not 0 <= t < vocab_size)
        raise UserInputError(
            f"prompt token [{pos}] = {tok} is outside the vocabulary (0..{vocab_size - 1})"
        )
    return tokens, images


def _check_sampling(body: SampleRequest) -> None:
    """Counts and sampling parameters in range; features this server lacks refused."""
    params = body.sampling_params
    if not 1 <= body.num_samples <= MAX_NUM_SAMPLES:
        raise UserInputError(f"num_samples must be in 1..{MAX_NUM_SAMPLES}, got {body.num_samples}")
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs"):
        k = getattr(body, name)
        if not 0 <= k <= MAX_TOPK_LOGPROBS:
            raise UserInputError(f"{name} must be in 0..{MAX_TOPK_LOGPROBS}, got {k}")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise UserInputError(f"sampling_params.max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise UserInputError(f"sampling_params.temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise UserInputError(f"sampling_params.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k == 0 or params.top_k < -1:
        raise UserInputError(f"sampling_params.top_k must be -1 (off) or >= 1, got {params.top_k}")
    if (
        body.prompt_alt_tokens_k
        or body.prompt_logprobs_last_n is not None
        or body.target_prompt_logprobs
    ):
        raise UserInputError(
            "prompt_alt_tokens_k, prompt_logprobs_last_n and target_prompt_logprobs "
            "are not supported"
        )


def _stop_lists(stop: str | list[str] | list[int] | None) -> tuple[list[str], list[int]]:
    """The SDK's ``stop`` (a string, strings, or token ids) as (stop strings, stop token ids)."""
    if isinstance(stop, str):
        return [stop], []
    if not stop:
        return [], []
    if all(isinstance(s, str) for s in stop):
        return [str(s) for s in stop], []
    return [], [int(s) for s in stop]
