"""Checkpoints, training runs, tinker:// paths, listings."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from tinsmith.types.base import WireModel
from tinsmith.types.training import AdamOptimizerConfig

CheckpointType = Literal["training", "sampler", "external"]

_KIND_TO_TYPE: dict[str, CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
TINKER_SCHEME = "tinker://"


class Checkpoint(WireModel):
    """One stored checkpoint as the SDK lists it (``list_checkpoints``, ``TrainingRun``)."""

    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: dt.datetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: dt.datetime | None = None


class ParsedCheckpointTinkerPath(WireModel):
    """A ``tinker://<run>/<kind>/<name>`` path split into its run, type and checkpoint id."""

    tinker_path: str
    training_run_id: str
    checkpoint_type: CheckpointType
    checkpoint_id: str

    @classmethod
    def from_tinker_path(cls, tinker_path: str) -> ParsedCheckpointTinkerPath:
        """Parse ``tinker://<run>/<kind>/<name>``; raises ValueError naming what is wrong."""
        if not tinker_path.startswith(TINKER_SCHEME):
            raise ValueError(f"path {tinker_path!r} must start with {TINKER_SCHEME}")
        parts = tinker_path[len(TINKER_SCHEME) :].split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"path {tinker_path!r} must look like tinker://<run>/<kind>/<name>")
        run, kind, name = parts
        if kind not in _KIND_TO_TYPE:
            raise ValueError(
                f"path {tinker_path!r}: kind {kind!r} is not one of {sorted(_KIND_TO_TYPE)}"
            )
        return cls(
            tinker_path=tinker_path,
            training_run_id=run,
            checkpoint_type=_KIND_TO_TYPE[kind],
            checkpoint_id=f"{kind}/{name}",
        )


class Cursor(WireModel):
    """Offset pagination of the ``training_runs`` and ``checkpoints`` listings."""

    offset: int
    limit: int
    total_count: int


class TrainingRun(WireModel):
    """``GET /training_runs/{run_id}`` (``RestClient.get_training_run``): one training client's run;
    the SDK validates it strictly, so every required field is sent."""

    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: dt.datetime
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(WireModel):
    """``GET /training_runs`` (``RestClient.list_training_runs``, ``tinker run list``)."""

    training_runs: list[TrainingRun]
    cursor: Cursor


class CheckpointsListResponse(WireModel):
    """``GET /training_runs/{run_id}/checkpoints`` and ``GET /checkpoints``
    (``RestClient.list_checkpoints``, ``list_user_checkpoints``)."""

    checkpoints: list[Checkpoint]
    cursor: Cursor | None = None


class CheckpointArchiveUrlResponse(WireModel):
    """``GET .../checkpoints/{kind}/{name}/archive``: tinsmith's one-file download of a whole
    checkpoint (SDK 0.38 has no such call; older SDKs did)."""

    url: str
    expires: dt.datetime


class ExternalWeightsUrlsResponse(WireModel):
    """``GET .../checkpoints/{kind}/{name}/external_weights_urls``: a signed link per file, what
    ``tinker checkpoint download`` fetches."""

    urls: dict[str, str]
    expires: dt.datetime


class WeightsInfoResponse(WireModel):
    """``POST /weights_info`` (``RestClient.get_weights_info_by_tinker_path``): a checkpoint's base
    model and LoRA config."""

    base_model: str
    optimizer_config: AdamOptimizerConfig = AdamOptimizerConfig()
    is_lora: bool
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None


class SupportedModel(WireModel):
    """One base model in ``get_server_capabilities``."""

    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(WireModel):
    """``GET /get_server_capabilities`` (``RestClient.get_server_capabilities``,
    ``tinker model list``): the base models this server serves."""

    supported_models: list[SupportedModel]
