"""Sampling types: SamplingParams, SampledSequence, SampleResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tinsmith.types.base import Seed, Text, WireModel
from tinsmith.types.data import TensorData

StopReason = Literal["length", "stop"]
SamplingClientKind = Literal["snapshot", "inflight"]

MAX_TOPK_LOGPROBS = 20  # top-k logprobs per position (vLLM's default max_logprobs)
MAX_TARGET_IDS = 64  # target_prompt_logprobs ids per prompt position
MAX_ALT_TOKENS = 64  # prompt_alt_tokens_k draws per prompt position
# What one prompt position may carry back from vLLM: top-k, target ids and draws.
MAX_PROMPT_COLUMNS = MAX_TOPK_LOGPROBS + MAX_TARGET_IDS + MAX_ALT_TOKENS


class SamplingParams(WireModel):
    """``SampleRequest.sampling_params``, as the SDK's ``SamplingParams``; ``stop`` holds strings
    or token ids."""

    max_tokens: int | None = None
    seed: Seed | None = None
    stop: Text | list[Text] | list[int] | None = None
    temperature: float = Field(default=1.0, allow_inf_nan=False)
    top_k: int = -1
    top_p: float = Field(default=1.0, allow_inf_nan=False)


class TopkLogprobs(WireModel):
    """Top-k logprobs per position: ``token_ids_L_K`` and ``logprobs_L_K``."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]


class SampledSequence(WireModel):
    """One sample of a ``SampleResponse``; the SDK fills ``sequence_id`` in from the future's
    ``sample_sequence_ids``."""

    stop_reason: StopReason
    tokens: list[int]
    logprobs: list[float] | None = None
    topk_logprobs: TopkLogprobs | None = None
    sequence_id: str = ""


class PromptAltTokens(WireModel):
    """Part of ``SampleResponse`` for ``prompt_alt_tokens_k``: ``[len(prompt) - 1, k]`` draws
    (int64) and their logprobs (float32)."""

    tokens: TensorData
    logprobs: TensorData


class SampleResponse(WireModel):
    """The result of an ``asample`` future, sent as protobuf (SDK 0.38 accepts no JSON for it)."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: TopkLogprobs | None = None
    target_prompt_logprobs: TensorData | None = None
    prompt_cache_hit_tokens: int = 0
    prompt_alt_tokens: PromptAltTokens | None = None
    type: Literal["sample"] = Field(default="sample", exclude=True)


class GetSamplerResponse(WireModel):
    """``GET /samplers/{sampler_id}`` (``RestClient.get_sampler``, and ``create_sampling_client``
    without a base model): what a sampling session samples."""

    sampler_id: str
    base_model: str
    model_path: str | None = None
