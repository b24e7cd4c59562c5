"""Rows of the metadata store, and their conversion to the SDK's wire types."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from tinsmith.types.base import InternalModel
from tinsmith.types.checkpoints import Checkpoint, CheckpointType, TrainingRun
from tinsmith.types.sessions import (
    ClientSessionFinished,
    FinishReason,
    FinishReasonType,
    SessionActive,
    SessionCancelled,
    SessionState,
    SessionSummary,
)
from tinsmith.types.training import LoraConfig


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC: every stored timestamp is one."""
    return dt.datetime.now(dt.UTC)


class FutureResult(InternalModel):
    """A finished future's HTTP body (JSON or protobuf bytes), kept in the store across restarts."""

    kind: Literal["json", "proto"]
    body: bytes
    failed: bool = False


MetricKind = Literal["forward_backward", "forward", "optim_step"]


class MetricPoint(InternalModel):
    """One training call's metrics, as the console plots them."""

    step: int = Field(description="The optimizer step the call belongs to, from 1.")
    kind: MetricKind
    at: dt.datetime
    metrics: dict[str, float]


class RunRecord(InternalModel):
    """A training run: one training client's adapter over a base model (id = model_id)."""

    training_run_id: str
    session_id: str
    base_model: str
    owner: str
    lora: LoraConfig
    created_at: dt.datetime = Field(default_factory=utcnow)
    last_request_time: dt.datetime = Field(default_factory=utcnow)
    user_metadata: dict[str, str] | None = None


class CheckpointRecord(InternalModel):
    """A checkpoint whose archive is completely written and verified in storage."""

    training_run_id: str
    checkpoint_id: str = Field(description="'<kind>/<name>', e.g. 'weights/step-10'.")
    checkpoint_type: CheckpointType
    tinker_path: str
    owner: str
    base_model: str
    lora: LoraConfig
    storage_key: str
    size_bytes: int
    sha256: str = Field(description="sha256 of the whole archive, checked before every extraction.")
    step: int = Field(description="optim_steps the adapter had taken when saved.")
    has_optimizer: bool
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None

    def to_wire(self) -> Checkpoint:
        return Checkpoint(
            checkpoint_id=self.checkpoint_id,
            checkpoint_type=self.checkpoint_type,
            time=self.created_at,
            tinker_path=self.tinker_path,
            size_bytes=self.size_bytes,
            public=self.public,
            user_metadata=self.user_metadata,
            expires_at=self.expires_at,
        )


def run_to_wire(
    run: RunRecord, last_training: CheckpointRecord | None, last_sampler: CheckpointRecord | None
) -> TrainingRun:
    """A run as the SDK's ``TrainingRun``, with its latest training and sampler checkpoints."""
    return TrainingRun(
        training_run_id=run.training_run_id,
        base_model=run.base_model,
        model_owner=run.owner,
        is_lora=True,
        lora_rank=run.lora.rank,
        last_request_time=run.last_request_time,
        last_checkpoint=last_training.to_wire() if last_training else None,
        last_sampler_checkpoint=last_sampler.to_wire() if last_sampler else None,
        user_metadata=run.user_metadata,
    )


class SessionRecord(InternalModel):
    """A session: who owns it, what the client said of it at creation, and how it ended."""

    session_id: str
    owner: str
    created_at: dt.datetime = Field(default_factory=utcnow)
    tags: list[str] = Field(default_factory=list)
    user_metadata: dict[str, str] | None = None
    project_id: str | None = None
    display_name: str | None = None
    state: SessionState = "active"
    finish_reason: FinishReasonType | None = None
    detail: str | None = None

    def status(self) -> SessionActive | ClientSessionFinished | SessionCancelled:
        """The SDK's ``SessionStatus`` of this session."""
        if self.state == "client_finished":
            reason = FinishReason(type=self.finish_reason or "success")
            return ClientSessionFinished(reason=reason, detail=self.detail)
        if self.state == "cancelled":
            return SessionCancelled(detail=self.detail)
        return SessionActive()

    def summary(self, checkpoints: int, checkpoint_bytes: int) -> SessionSummary:
        """The session as a search result, with its checkpoints' count and size."""
        return SessionSummary(
            session_id=self.session_id,
            created_at=self.created_at,
            owner=self.owner,
            project_id=self.project_id or "",
            status=self.status(),
            checkpoints_count=checkpoints,
            display_name=self.display_name,
            user_metadata=self.user_metadata,
            checkpoint_storage_bytes=checkpoint_bytes,
        )
