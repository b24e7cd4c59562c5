"""Settings the actors are built with: the trainer's and the sampler's (part of the cluster config).

They live below ``tinsmith.cluster`` so that the actors take plain settings objects without
importing the layer that creates them; ``tinsmith.cluster.config`` embeds them in its schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainerConfig(_Settings):
    """DeepSpeed trainer ranks (one Ray actor each) for every base model."""

    num_ranks: int = Field(
        default=1, ge=1, description="Data-parallel trainer ranks per base model."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=1,
        description=(
            "DeepSpeed ZeRO stage. 1 shards AdamW state and reduces gradients once per "
            "optim_step; 2 also shards gradients but reduces them after every micro-batch's "
            "backward, which a LoRA's small gradients do not repay; 3 also shards the adapter's "
            "weights, gathered for every forward."
        ),
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description=(
            "Training dtype of the base model and adapters; AdamW keeps "
            "fp32 master weights either way."
        ),
    )
    micro_batch_tokens: int = Field(
        default=4096,
        ge=1,
        description=(
            "Token budget of one micro-batch (padded length x datums); bigger batches are split."
        ),
    )
    max_padding_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description=(
            "A micro-batch closes early rather than let padding exceed this share of its tokens."
        ),
    )
    packing: bool = Field(
        default=True,
        description=(
            "Text datums share a micro-batch as one row, each with its own positions and "
            "attending only to itself: no padding. Off (and for vision models): right-padded rows."
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description=(
            "Recompute each decoder layer's activations in the backward instead of keeping them: "
            "memory grows with tokens x hidden, not tokens x layers x activations."
        ),
    )
    gradient_checkpointing_above_tokens: int = Field(
        default=0,
        ge=0,
        description=(
            "With gradient_checkpointing: only micro-batches of more than this many tokens are "
            "checkpointed (set to micro_batch_tokens: only a datum longer than a micro-batch, so "
            "ordinary batches skip the ~1/3 extra compute). 0: every micro-batch."
        ),
    )
    logprob_chunk_tokens: int = Field(
        default=2048,
        ge=0,
        description=(
            "Target logprobs (and the losses on them) of a micro-batch longer than this are "
            "computed over chunks of at most this many tokens, each chunk's logits recomputed in "
            "the backward (~10% more compute on a 135M model), so it never holds tokens x "
            "vocabulary logits at once. 0: whole micro-batches."
        ),
    )
    num_cpus_per_rank: float = Field(
        default=0, ge=0, description="Ray CPU resource per trainer rank."
    )
    num_gpus_per_rank: float = Field(
        default=0, ge=0, description="Ray GPU resource per trainer rank."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources per trainer rank, e.g. {trainer: 1} to "
            "land on nodes started with them."
        ),
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads per rank (default: cores / ranks)."
    )


class SamplerConfig(_Settings):
    """vLLM sampler replicas for every base model."""

    num_replicas: int = Field(
        default=1, ge=0, description="vLLM engine replicas per base model (0: train only)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="vLLM dtype."
    )
    max_model_len: int = Field(default=2048, ge=16, description="vLLM max_model_len.")
    max_loras: int = Field(default=4, ge=1, description="Adapters vLLM keeps active in one batch.")
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = Field(
        default=32,
        description=(
            "Largest LoRA rank the sampler serves; training clients with a larger rank are "
            "refused. vLLM pads every adapter to this rank, so its sampling cost grows with it."
        ),
    )
    max_cpu_loras: int = Field(default=32, ge=1, description="Adapters cached in memory by vLLM.")
    adapters: Literal["lora", "merged"] = Field(
        default="lora",
        description=(
            "How the sampler serves trained adapters. lora: vLLM's LoRA kernels, many adapters "
            "in one batch. merged: each adapter folded into the base weights and the engine's "
            "weights reloaded in place, one version at a time - for models whose LoRA the "
            "device's vLLM cannot run (MoE on vLLM's CPU build)."
        ),
    )
    kv_cache_gib: float = Field(
        default=1.0, gt=0, description="KV cache size in GiB (CPU backend)."
    )
    block_size: int | None = Field(
        default=None,
        ge=16,
        le=256,
        multiple_of=16,
        description=(
            "KV-cache block size in tokens. Prefix-cache hits come in whole blocks, so a group "
            "of samples from one prompt (RL) shares only its prompt's full blocks. None: 32 on "
            "CPU (vLLM-CPU's smallest; its own default of 128 leaves every prompt under 128 "
            "tokens uncached: 64 samples of 8 prompts of 110 tokens took 19 s instead of 5.7), "
            "vLLM's default on GPU."
        ),
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=16,
        description=(
            "Tokens vLLM runs in one step (prefill chunks included). None: max_model_len on CPU "
            "(at least 4,096, vLLM-CPU's default), so that a prompt alone is prefilled in one "
            "causal pass (through PyTorch's SDPA: tinsmith/actors/vllm_cpu_prefill.py) instead "
            "of chunks that read the cache back (prompt logprobs then hold a whole prompt's "
            "logits at once: 8k tokens x SmolLM2's vocabulary in fp32 is 1.6 GB); vLLM's "
            "default on GPU."
        ),
    )
    gpu_memory_utilization: float = Field(
        default=0.4, gt=0, le=1, description="vLLM GPU memory share."
    )
    enforce_eager: bool = Field(
        default=True, description="Skip CUDA graphs / compilation (faster start)."
    )
    num_cpus: float = Field(default=0, ge=0, description="Ray CPU resource per replica.")
    num_gpus: float = Field(default=0, ge=0, description="Ray GPU resource per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica, e.g. {sampler: 1}."
    )
