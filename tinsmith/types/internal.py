"""Types exchanged between tinsmith's own components (API server, coordinator, workers).

They avoid optionals where a value is always known, and carry token ids as plain lists so that
they pickle small and import nothing heavy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tinsmith.types.archives import ArchiveRef, StoredObject
from tinsmith.types.base import InternalModel
from tinsmith.types.data import ImagePlacement
from tinsmith.types.training import AdamParams, LoraConfig


class TokenDatum(InternalModel):
    """One training example, already validated: position t of
    ``input_tokens`` predicts ``targets[t]``."""

    index: int = Field(description="Position of the datum in its request, to restore order.")
    input_tokens: list[int]
    target_tokens: list[int]
    weights: list[float]
    extra: dict[str, list[float]] = Field(default_factory=dict, description="Other loss inputs.")
    images: list[ImagePlacement] = Field(
        default_factory=list, description="Images whose placeholders are in input_tokens."
    )

    @property
    def length(self) -> int:
        return len(self.input_tokens)


class MicroBatch(InternalModel):
    """Datums run in one forward pass: packed into one row, or right-padded to the longest.

    ``checkpoint`` and ``logit_chunks`` are the same for the k-th micro-batch of every rank (an
    empty one included): under ZeRO-3 each call of an adapter's layer gathers its weights, a
    collective, so every rank must call its layers as often as its peers.
    """

    datums: list[TokenDatum]
    packed: bool = False
    checkpoint: bool = Field(default=False, description="Recompute layer activations in backward.")
    logit_chunks: int = Field(default=1, ge=1, description="Chunks the target logprobs run in.")

    @property
    def tokens(self) -> int:
        return sum(d.length for d in self.datums)

    @property
    def padded_tokens(self) -> int:
        if self.packed:
            return self.tokens
        return len(self.datums) * max((d.length for d in self.datums), default=0)


class BatchLayout(InternalModel):
    """How the coordinator cuts a request into micro-batches (from the model's TrainerConfig)."""

    micro_batch_tokens: int = Field(ge=1)
    max_padding_fraction: float = Field(default=0.1, ge=0, le=1)
    packing: bool = True
    checkpoint_above_tokens: int | None = Field(
        default=None,
        description="Checkpoint micro-batches of more than this many tokens; None: off.",
    )
    logprob_chunk_tokens: int = Field(default=0, ge=0, description="0: whole micro-batches.")


class AdapterSpec(InternalModel):
    """A training client's adapter as every trainer rank creates it (again, on a restarted rank)."""

    adapter_id: str
    lora: LoraConfig


class RankWork(InternalModel):
    """What one trainer rank runs for one forward_backward request."""

    adapter_id: str
    loss_fn: str
    loss_fn_config: dict[str, float | str] = Field(default_factory=dict)
    forward_only: bool
    micro_batches: list[MicroBatch]
    grad_scale: float = Field(
        description="Multiplies the loss before backward (undoes DP averaging)."
    )


class DatumResult(InternalModel):
    """One datum's per-token outputs from a rank; the SDK gets them as ``loss_fn_outputs``."""

    index: int
    logprobs: list[float]
    elementwise_loss: list[float]


class RankResult(InternalModel):
    """What one trainer rank answers for a ``RankWork``: per-datum results and its share of the
    metrics."""

    datums: list[DatumResult]
    loss_sum: float
    tokens: int
    seconds: float = Field(default=0.0, description="Wall time the rank spent on the request.")


class OptimStepWork(InternalModel):
    """One optimizer step of one adapter, run by every trainer rank."""

    adapter_id: str
    adam: AdamParams


class SavedAdapter(InternalModel):
    """An adapter written as a peft directory (adapter_config.json + adapter_model.safetensors)."""

    path: str
    size_bytes: int


class SampleWork(InternalModel):
    """One sampling request for a sampler replica."""

    prompt_tokens: list[int]
    num_samples: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop_strings: list[str]
    stop_token_ids: list[int]
    prompt_logprobs: bool
    topk_prompt_logprobs: int
    topk_sample_logprobs: int
    prompt_logprobs_last_n: int | None = Field(
        default=None, description="Report prompt logprobs of only the last N positions."
    )
    target_token_ids: list[list[int]] | None = Field(
        default=None,
        description="[len(prompt) - 1][K] ids whose logprobs to report per position (-1: none).",
    )
    prompt_alt_tokens_k: int = Field(
        default=0, description="Draws per prompt position at the request's temperature."
    )
    adapter_key: str | None = Field(
        description="Loaded adapter to use; None samples the base model."
    )
    images: list[ImagePlacement] = Field(
        default_factory=list, description="Images whose placeholders are in prompt_tokens."
    )


class WorkerStatus(InternalModel):
    """What one trainer rank or sampler replica holds, for operators and memory benchmarks."""

    kind: Literal["trainer", "sampler"]
    index: int
    pid: int
    rss_bytes: int
    adapters: int
    adapter_param_bytes: int = Field(
        default=0, description="Adapter weights plus optimizer state (trainer)."
    )
    node_id: str = Field(default="", description="The Ray node the worker runs on.")
    node_resources: dict[str, float] = Field(
        default_factory=dict, description="That node's Ray resources."
    )


class ModelStatus(InternalModel):
    """One base model's clients and workers, as ``GET /api/v1/tinsmith/status`` reports them."""

    base_model: str
    training_models: int
    workers: list[WorkerStatus] = Field(description="Live workers only.")
    sampler_alive: list[bool] = Field(default_factory=list, description="Per sampler replica.")
    sampler_requests: list[int] = Field(
        default_factory=list, description="Sample requests served, per replica."
    )
    sampler_restarts: list[int] = Field(
        default_factory=list, description="Times each replica was replaced."
    )
    trainer_restarts: int = Field(
        default=0, description="Times the trainer ranks were restarted after one died."
    )


class CheckpointMeta(InternalModel):
    """``tinsmith_checkpoint.json`` inside every archive: enough to rebuild the adapter anywhere."""

    format: Literal["tinsmith-state-v1"] = "tinsmith-state-v1"
    kind: Literal["weights", "sampler_weights", "external_weights"]
    base_model: str
    lora: LoraConfig
    step: int = Field(default=0, description="optim_steps the adapter had taken.")
    has_optimizer: bool = False


class SaveCheckpointWork(InternalModel):
    """Write one adapter (and optionally its optimizer state) as a checkpoint archive."""

    adapter_id: str
    archive: ArchiveRef
    meta: CheckpointMeta = Field(description="step and has_optimizer are filled in by the trainer.")
    with_optimizer: bool


class SavedCheckpoint(InternalModel):
    """Trainer rank 0's answer to ``SaveCheckpointWork``: the stored archive and the meta in it."""

    stored: StoredObject
    meta: CheckpointMeta


class LoadCheckpointWork(InternalModel):
    """Set a freshly created adapter (and optionally its optimizer) from a stored archive."""

    adapter_id: str
    archive: ArchiveRef
    with_optimizer: bool


class AdapterSnapshot(InternalModel):
    """One adapter's full training state in memory (safetensors bytes: ``weights/<param>`` and the
    AdamW tensors of ``optimizer_state``), taken after every optimizer step. The coordinator keeps
    the latest per training client and restores it on restarted trainer ranks."""

    step: int
    tensors: bytes


class AdapterBlob(InternalModel):
    """An adapter's peft files in memory (file name -> bytes): the ephemeral weight sync moves this
    through Ray's object store from trainer rank 0 to every sampler, with no disk or storage
    trip."""

    files: dict[str, bytes]

    @property
    def size_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())


class AdapterSource(InternalModel):
    """Where a sampler replica finds an adapter's peft files: a directory it can read, a stored
    checkpoint archive, or the files themselves."""

    path: str | None = None
    archive: ArchiveRef | None = None
    blob: AdapterBlob | None = None
