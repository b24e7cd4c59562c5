"""Sampling types: SamplingParams, SampledSequence, SampleResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tinsmith.types.base import Seed, Text, WireModel
from tinsmith.types.data import TensorData

StopReason = Literal["length", "stop"]
SamplingClientKind = Literal["snapshot", "inflight"]


class SamplingParams(WireModel):
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
    stop_reason: StopReason
    tokens: list[int]
    logprobs: list[float] | None = None
    topk_logprobs: TopkLogprobs | None = None
    sequence_id: str = ""


class PromptAltTokens(WireModel):
    tokens: TensorData
    logprobs: TensorData


class SampleResponse(WireModel):
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: TopkLogprobs | None = None
    target_prompt_logprobs: TensorData | None = None
    prompt_cache_hit_tokens: int = 0
    prompt_alt_tokens: PromptAltTokens | None = None
    type: Literal["sample"] = Field(default="sample", exclude=True)


class GetSamplerResponse(WireModel):
    sampler_id: str
    base_model: str
    model_path: str | None = None
