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
    rank: int = Field(ge=1, le=512)
    seed: Seed | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class AdamOptimizerConfig(WireModel):
    type: Literal["adamw"] = "adamw"


class DimuonOptimizerConfig(WireModel):
    type: Literal["dimuon"] = "dimuon"
    version: Literal[1] = 1


OptimizerConfig = Annotated[
    AdamOptimizerConfig | DimuonOptimizerConfig, Field(discriminator="type")
]


class AdamParams(WireModel):
    learning_rate: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-12, ge=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    grad_clip_norm: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class DimuonParams(WireModel):
    type: Literal["dimuon"] = "dimuon"
    learning_rate: float
    grad_clip_norm: float = 0.0
    beta1: float = 0.9


class ForwardBackwardInput(WireModel):
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None


class ForwardBackwardOutput(WireModel):
    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float]


class OptimStepResponse(WireModel):
    metrics: dict[str, float] | None = None


class ModelData(WireModel):
    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(WireModel):
    type: Literal["get_info"] | None = None
    model_data: ModelData
    model_id: str
    optimizer_config: OptimizerConfig = Field(default_factory=AdamOptimizerConfig)
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


class CreateModelResponse(WireModel):
    model_id: str
    type: Literal["create_model"] = "create_model"


class UnloadModelResponse(WireModel):
    model_id: str
    type: Literal["unload_model"] | None = None


class SaveWeightsResponse(WireModel):
    path: str
    type: Literal["save_weights"] | None = None


class LoadWeightsResponse(WireModel):
    path: str | None = None
    model_id: str | None = None
    type: Literal["load_weights"] | None = None


class SaveWeightsForSamplerResponse(WireModel):
    path: str
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsForSamplerResponseInternal(WireModel):
    """What the server really returns: a path for named saves, a sampling session for ephemeral ones."""

    path: str | None = None
    sampling_session_id: str | None = None
    type: Literal["save_weights_for_sampler"] | None = None


class SaveWeightsExternalResponse(WireModel):
    path: str
    size_bytes: int | None = None
    type: Literal["save_weights_external"] | None = None
