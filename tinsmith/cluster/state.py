"""What the API server's routes share: the served base models, the live clients, the futures, the
checkpoint service, and the tenant checks on them. Routes receive it as a FastAPI dependency
(``State``), found through ``app_part``, so no route module imports another.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, FastAPI, Request

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.checkpoints import CheckpointService
from tinsmith.cluster.config import AuthConfig, ImagesConfig, LimitsConfig
from tinsmith.cluster.futures import FutureStore, interrupted_failure
from tinsmith.cluster.images import ImageSource, ImageTokenCounter
from tinsmith.cluster.metrics import ServerMetrics
from tinsmith.cluster.registry import ClientLimits, ClientRegistry
from tinsmith.cluster.submission import Submitter
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.storage.config import StorageConfig
from tinsmith.store.base import MetadataStore
from tinsmith.store.records import (
    CheckpointRecord,
    MetricKind,
    RunRecord,
    SessionRecord,
    utcnow,
)
from tinsmith.types.architectures import Architecture, architecture
from tinsmith.types.coordinator import CoordinatorAPI

T = TypeVar("T")
log = logging.getLogger(__name__)

CheckpointKind = Literal["weights", "sampler_weights", "external_weights"]
"""The kinds of checkpoint, as they appear in a tinker:// path."""


@dataclass
class ServedModel:
    """A base model this server serves, and the coordinator that runs its work."""

    name: str
    model_dir: Path
    max_context_length: int
    coordinator: CoordinatorAPI
    vocab_size: int
    arch: Architecture = field(default_factory=lambda: architecture("llama"))
    max_lora_rank: int = 512
    trainable: bool = True
    sampleable: bool = True
    image_token_id: int | None = None  # None: text only
    image_tokens: ImageTokenCounter | None = None  # measures images (vision models)


@dataclass
class ServerState:
    """Everything the routes share; the pieces (clients, futures, submitter) are built here."""

    models: dict[str, ServedModel]
    checkpoints: CheckpointService
    reaper_seconds: float = 60.0
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    images: ImageSource = field(default_factory=lambda: ImageSource(ImagesConfig(), None))
    clients: ClientRegistry = field(init=False)
    decode_slots: asyncio.Semaphore = field(init=False)  # forward_backward bodies being decoded
    futures: FutureStore = field(init=False)
    submitter: Submitter = field(init=False)

    def __post_init__(self) -> None:
        # Futures live in the metadata store too. Any still pending there belong to a previous
        # process (this one has submitted none yet): they fail, retryably, instead of hanging.
        interrupted = self.store.interrupt_pending_futures(interrupted_failure())
        if interrupted:
            log.warning(
                "%d requests were in flight when the server last stopped; they now fail",
                interrupted,
            )
        self.futures = FutureStore(
            self.store, max_pending_per_owner=self.limits.max_pending_per_tenant
        )
        limits = ClientLimits(
            training_per_tenant=self.limits.max_training_clients_per_tenant,
            samplers_per_tenant=self.limits.max_sampling_sessions_per_tenant,
            session_timeout_seconds=self.limits.session_timeout_seconds,
        )
        self.clients = ClientRegistry(
            self.models, self.store, self.metrics.training_clients, limits
        )
        self.submitter = Submitter(self.futures, self.metrics, self.clients)
        self.decode_slots = asyncio.Semaphore(self.limits.max_concurrent_decodes)

    @property
    def store(self) -> MetadataStore:
        """The metadata store (sessions, runs, checkpoints, futures)."""
        return self.checkpoints.store

    @property
    def storage_config(self) -> StorageConfig:
        """Where checkpoint archives are stored, and how long download links last."""
        return self.checkpoints.storage_config

    def served(self, base_model: str) -> ServedModel:
        """A base model served here, or a ``UserInputError`` naming those that are."""
        model = self.models.get(base_model)
        if model is None:
            available = ", ".join(sorted(self.models))
            raise UserInputError(
                f"base_model {base_model!r} is not served here; available: {available}"
            )
        return model

    def readable_checkpoint(self, tinker_path: str, field: str = "path") -> CheckpointRecord:
        """A checkpoint the caller may read or load: its own, or a published one."""
        record = self.checkpoints.resolve(tinker_path, field)
        if record.owner != current_tenant() and not record.public:
            raise NotFoundError(f"{field}: checkpoint {tinker_path!r} does not exist")
        return record

    def owned_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointRecord:
        """A checkpoint the caller may change or delete (only its own); ``checkpoint_id`` is
        ``<kind>/<name>``."""
        record = self.checkpoints.resolve(f"tinker://{run_id}/{checkpoint_id}", "checkpoint")
        if record.owner != current_tenant():
            raise NotFoundError(f"checkpoint tinker://{run_id}/{checkpoint_id} does not exist")
        return record

    def owned_run(self, run_id: str) -> RunRecord:
        """The caller's training run, live or not (another tenant's answers as missing)."""
        run = self.store.get_run(run_id)
        if run is None or run.owner != current_tenant():
            raise NotFoundError(f"training run {run_id!r} does not exist")
        return run

    def owned_session(self, session_id: str) -> SessionRecord:
        """The caller's session, live or ended (another tenant's answers as missing)."""
        record = self.store.get_session(session_id)
        if record is None or record.owner != current_tenant():
            raise NotFoundError(f"session {session_id!r} does not exist")
        return record

    def check_session(self, session_id: str) -> None:
        """A session of another tenant answers as unknown. An id nobody has used yet becomes
        the caller's (the SDK always creates its session first; a client that makes up its own
        ids still owns them), so every run and sampler is under a session with one owner."""
        if self.store.claim_session(session_id, current_tenant()) != current_tenant():
            raise NotFoundError(f"session_id {session_id!r} is unknown")
        self.clients.touch(session_id)

    async def record_metrics(
        self, training_run_id: str, kind: MetricKind, metrics: dict[str, float]
    ) -> None:
        """Keep a training call's metrics for the console. Off the event loop; a failure is
        logged, never the caller's: the call itself succeeded."""
        keep = self.limits.max_metric_points_per_run
        try:
            await asyncio.to_thread(
                self.store.add_metrics, training_run_id, kind, metrics, utcnow(), keep
            )
        except Exception:
            log.exception("could not record the metrics of %s", training_run_id)

    async def close_quiet_sessions(self) -> int:
        """Unload the training clients of sessions quiet for longer than
        ``limits.session_timeout_seconds`` (the background reaper calls this); returns how many."""
        closed = self.clients.expire_quiet_sessions()
        for model in closed:
            try:
                await self.served(model.base_model).coordinator.unload_model(model.model_id)
            except Exception:  # its ranks may be restarting; the adapter goes with them then
                log.exception("could not unload %s of a closed session", model.model_id)
            self.clients.remove_training(model.model_id)
            log.info("unloaded %s: its session %s went quiet", model.model_id, model.session_id)
        return len(closed)


def attach(app: FastAPI, part: object) -> None:
    """Make ``part`` (the ``ServerState``, the ``KeyRing``, the console's sign-ins) what
    ``app_part`` finds for every request of ``app``: one object of each class."""
    setattr(app.state, type(part).__name__, part)


def app_part(request: Request, kind: type[T]) -> T:
    """The ``kind`` object ``attach`` gave this request's app."""
    part = getattr(request.app.state, kind.__name__, None)
    if not isinstance(part, kind):
        raise RuntimeError(f"the app has no {kind.__name__}; build it with build_app")
    return part


def get_state(request: Request) -> ServerState:
    """The FastAPI dependency behind ``State``: the app's ``ServerState``."""
    return app_part(request, ServerState)


State = Annotated[ServerState, Depends(get_state)]
