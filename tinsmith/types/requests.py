"""Request bodies the SDK sends as JSON (forward_backward travels as protobuf, see ``proto``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tinsmith.types.base import Identifier, JsonMetadata, SeqNumber, Text, WireModel
from tinsmith.types.data import ModelInput, TensorData
from tinsmith.types.sampling import SamplingClientKind, SamplingParams
from tinsmith.types.training import (
    AdamOptimizerConfig,
    AdamParams,
    DimuonParams,
    ForwardBackwardInput,
    LoraConfig,
    OptimizerConfig,
)


class ClientConfigRequest(WireModel):
    """The SDK's body for ``/client/config`` and ``/client/dynamic_config``; routes ignore it."""

    sdk_version: Text = ""


class ClientConfigResponse(WireModel):
    """Server feature flags for the SDK; the defaults keep optional endpoints off."""

    pjwt_auth_enabled: bool = False
    credential_default_source: str = "api_key"
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    sample_use_retrieve_futures: bool = False
    custom_loss_server_side: bool = False
    sample_join_sampling_session: bool = False
    fwdbwd_max_chunk_len: int = 1024  # datums per forward_backward request (the SDK chunks to it)
    fwdbwd_max_chunk_bytes_count: int = 5_000_000


class ClientDynamicConfigResponse(WireModel):
    """``POST /client/dynamic_config``, re-read by the SDK every ``refresh_interval_sec``; the
    defaults keep sample cancellation off."""

    refresh_interval_sec: int = 300
    sample_cancel_enabled: bool = False
    sample_cancel_max_batch_size: int = 64


class CreateSessionRequest(WireModel):
    """``POST /create_session``: sent on a ``ServiceClient``'s first use."""

    tags: list[Text] = Field(default_factory=list)
    user_metadata: JsonMetadata | None = None
    sdk_version: Text = ""
    project_id: Text | None = None
    display_name: Text | None = None
    type: Literal["create_session"] = "create_session"


class CreateSessionResponse(WireModel):
    """``POST /create_session``: the id that the session's models and samplers are named after."""

    session_id: str
    type: Literal["create_session"] = "create_session"
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None


class SessionHeartbeatRequest(WireModel):
    """``POST /session_heartbeat``: sent by the SDK every 10 s while a session is open."""

    session_id: Identifier
    type: Literal["session_heartbeat"] = "session_heartbeat"


class SessionHeartbeatResponse(WireModel):
    """``POST /session_heartbeat``: the session is still known."""

    type: Literal["session_heartbeat"] = "session_heartbeat"


class CreateModelRequest(WireModel):
    """``POST /create_model`` (``create_lora_training_client``): a new LoRA training client; the
    model id is ``<session_id>:train:<model_seq_id>``."""

    session_id: Identifier
    model_seq_id: SeqNumber
    base_model: Text
    user_metadata: JsonMetadata | None = None
    lora_config: LoraConfig | None = None
    optimizer_config: OptimizerConfig = Field(default_factory=AdamOptimizerConfig)
    type: Literal["create_model"] = "create_model"


class GetInfoRequest(WireModel):
    """``POST /get_info``, sent right after a training client is created or loaded."""

    model_id: Identifier
    type: Literal["get_info"] = "get_info"


class ForwardBackwardRequest(WireModel):
    """Decoded form of the protobuf ForwardBackwardRequest."""

    forward_backward_input: ForwardBackwardInput
    model_id: Identifier
    seq_id: int | None = None
    forward_only: bool = False


class OptimStepRequest(WireModel):
    """``POST /optim_step`` (``TrainingClient.optim_step``): AdamW in ``adam_params``; Dimuon's
    ``optimizer_params`` is refused."""

    model_id: Identifier
    seq_id: int | None = None
    adam_params: AdamParams | None = None
    optimizer_params: DimuonParams | None = None
    type: Literal["optim_step"] = "optim_step"


class SaveWeightsRequest(WireModel):
    """``POST /save_weights`` (``TrainingClient.save_state``): weights and optimizer state under
    ``tinker://<run>/weights/<path>``."""

    model_id: Identifier
    path: Text | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = None
    overwrite: bool = False
    user_metadata: dict[Text, Text] | None = None
    type: Literal["save_weights"] = "save_weights"


class SaveWeightsForSamplerRequest(WireModel):
    """``POST /save_weights_for_sampler``: a stored sampler checkpoint (with ``path``), or, from
    ``save_weights_and_get_sampling_client``, an ephemeral sync (``sampling_session_seq_id``)."""

    model_id: Identifier
    path: Text | None = None
    sampling_session_seq_id: SeqNumber | None = None
    kind: SamplingClientKind = "snapshot"
    seq_id: int | None = None
    ttl_seconds: int | None = None
    user_metadata: dict[Text, Text] | None = None
    type: Literal["save_weights_for_sampler"] = "save_weights_for_sampler"


class SaveWeightsExternalRequest(WireModel):
    """``POST /save_weights_external`` (``TrainingClient.save_weights_external``): the adapter as
    downloadable files."""

    model_id: Identifier
    path: Text
    seq_id: int | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[Text] | None = None
    type: Literal["save_weights_external"] = "save_weights_external"


class LoadWeightsRequest(WireModel):
    """Either a new training client (session_id + model_seq_id) or the older load_state form on an
    existing one (model_id + seq_id)."""

    model_id: Identifier | None = None
    seq_id: int | None = None
    session_id: Identifier | None = None
    model_seq_id: SeqNumber | None = None
    base_model: Text | None = None
    user_metadata: JsonMetadata | None = None
    path: Text
    optimizer: bool
    optimizer_config: OptimizerConfig | None = None
    weights_access_token: Text | None = None
    type: Literal["load_weights"] = "load_weights"


class WeightsInfoRequest(WireModel):
    """``POST /weights_info`` (``RestClient.get_weights_info_by_tinker_path``)."""

    tinker_path: Text


class CheckpointTtlRequest(WireModel):
    """``PUT .../checkpoints/{kind}/{name}/ttl`` (``set_checkpoint_ttl_from_tinker_path``);
    ``None`` clears the expiry."""

    ttl_seconds: int | None = None


class CopyWeightsRequest(WireModel):
    """``POST /copy_weights`` (``RestClient.copy_weights``, ``ServiceClient.copy_weights``):
    a copy of a checkpoint in a new session of the destination project, or under the run
    ``<session_id>:train:<model_seq_id>`` of one of the caller's sessions."""

    source_path: Text
    destination_project_id: Annotated[Text, Field(max_length=256)] | None = None
    session_id: Identifier | None = None
    model_seq_id: SeqNumber | None = None
    ttl_seconds: int | None = None


class CopyWeightsResponse(WireModel):
    """The copy's ``tinker://`` path."""

    tinker_path: str


class UnloadModelRequest(WireModel):
    """``POST /unload_model``: frees a training client's adapter (no SDK method sends it)."""

    model_id: Identifier
    type: Literal["unload_model"] = "unload_model"


class CreateSamplingSessionRequest(WireModel):
    """``POST /create_sampling_session`` (``create_sampling_client``): a sampler of a stored
    checkpoint (``model_path``) or of a base model."""

    session_id: Identifier
    sampling_session_seq_id: SeqNumber
    base_model: Text | None = None
    model_path: Text | None = None
    type: Literal["create_sampling_session"] = "create_sampling_session"


class CreateSamplingSessionResponse(WireModel):
    """``POST /create_sampling_session``: the id ``asample`` requests name."""

    sampling_session_id: str
    type: Literal["create_sampling_session"] = "create_sampling_session"


class SampleRequest(WireModel):
    """``POST /asample`` (``SamplingClient.sample``, ``compute_logprobs``). ``prompt_alt_tokens_k``,
    ``prompt_logprobs_last_n`` and ``target_prompt_logprobs`` are refused."""

    num_samples: int = 1
    prompt: ModelInput
    sampling_params: SamplingParams
    base_model: Text | None = None
    model_path: Text | None = None
    sampling_session_id: Identifier | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    target_prompt_logprobs: TensorData | None = None
    prompt_alt_tokens_k: int = 0
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool | None = None
    type: Literal["sample"] = "sample"


class HealthResponse(WireModel):
    """``GET /healthz``: liveness, answered without an API key."""

    status: Literal["ok"] = "ok"
