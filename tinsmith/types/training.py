"""Training types: LoRA and optimizer configs, forward/backward and optim_step payloads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tinsmith.types.base import Seed, WireModel
from tinsmith.types.data import Datum, LossFnOutput

LossFnType = Literal[
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
    "custom",
]


class LoraConfig(WireModel):
    """``CreateModelRequest.lora_config``: the adapter's rank and which layers it trains; kept with
    the run and every checkpoint so a load can rebuild the same adapter."""

    rank: int = Field(ge=1, le=512)
    seed: Seed | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class AdamOptimizerConfig(WireModel):
    """The optimizer a training client is created with: AdamW, the only one this server runs."""

    type: Literal["adamw"] = "adamw"


class DimuonOptimizerConfig(WireModel):
    """The SDK's Dimuon optimizer choice: parsed, then refused by create_model and load_weights."""

    type: Literal["dimuon"] = "dimuon"
    version: Literal[1] = 1


OptimizerConfig = Annotated[
    AdamOptimizerConfig | DimuonOptimizerConfig, Field(discriminator="type")
]


class AdamParams(WireModel):
    """``OptimStepRequest.adam_params``: one AdamW step's hyperparameters, with the SDK's defaults
    (decoupled weight decay; ``grad_clip_norm`` 0 means no clipping)."""

    learning_rate: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-12, ge=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    grad_clip_norm: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class DimuonParams(WireModel):
    """``OptimStepRequest.optimizer_params`` for Dimuon; parsed so the refusal can name it."""

    type: Literal["dimuon"] = "dimuon"
    learning_rate: float
    grad_clip_norm: float = 0.0
    beta1: float = 0.9


class ForwardBackwardInput(WireModel):
    """The batch of a ``forward_backward`` / ``forward`` call (decoded from protobuf): datums, the
    loss and its config."""

    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None


class ForwardBackwardOutput(WireModel):
    """The result of a ``forward_backward`` future, sent as protobuf: per-datum ``logprobs`` and
    ``elementwise_loss``, and ``name:reduction`` metrics (``loss:sum`` among them)."""

    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float]


class OptimStepResponse(WireModel):
    """The result of an ``optim_step`` future."""

    metrics: dict[str, float] | None = None


class ModelData(WireModel):
    """``GetInfoResponse.model_data``; the SDK loads the tokenizer from ``tokenizer_id``."""

    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(WireModel):
    """``POST /get_info``: a training client's base model, tokenizer and LoRA rank."""

    type: Literal["get_info"] | None = None
    model_data: ModelData
    model_id: str
    optimizer_config: OptimizerConfig = Field(default_factory=AdamOptimizerConfig)
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


class CreateModelResponse(WireModel):
    """The result of a ``create_model`` future: the new training client's model id."""

    model_id: str
    type: Literal["create_model"] = "create_model"


class UnloadModelResponse(WireModel):
    """The result of an ``unload_model`` future."""

    model_id: str
    type: Literal["unload_model"] | None = None


class SaveWeightsResponse(WireModel):
    """The result of a ``save_weights`` future (``save_state``): the checkpoint's tinker path."""

    path: str
    type: Literal["save_weights"] | None = None


class LoadWeightsResponse(WireModel):
    """The result of a ``load_weights`` future: the path loaded and the client it went into."""

    path: str | None = None
    model_id: str | None = None
    type: Literal["load_weights"] | None = None


class SaveWeightsForSamplerResponse(WireModel):
    """The SDK's public result type of ``save_weights_for_sampler``; the route answers with
    ``SaveWeightsForSamplerResponseInternal``, which also covers ephemeral saves."""

    path: str
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsForSamplerResponseInternal(WireModel):
    """What the server really returns: a path for named saves, a
    sampling session for ephemeral ones."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsExternalResponse(WireModel):
    """The result of a ``save_weights_external`` future: the checkpoint's path and archive size."""

    path: str
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = None
