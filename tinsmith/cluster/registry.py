"""The live training clients and sampling sessions of this server process, and who owns each.

Every lookup for a request compares the owner with the request's tenant: another tenant's client
or session answers as unknown, so a tenant cannot learn what others have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Gauge

from tinsmith.cluster.auth import current_tenant
from tinsmith.errors import NotFoundError
from tinsmith.store.base import MetadataStore
from tinsmith.store.records import RunRecord
from tinsmith.types.internal import AdapterSource
from tinsmith.types.training import LoraConfig


@dataclass
class TrainingModel:
    """A live training client: its adapter lives on the base model's trainer ranks."""

    model_id: str
    session_id: str
    base_model: str
    lora: LoraConfig
    owner: str


@dataclass
class SamplerSession:
    """What a sampling client samples: a base model, optionally with an adapter (by key)."""

    sampler_id: str
    base_model: str
    model_path: str | None
    adapter_key: str | None
    source: AdapterSource | None
    owner: str


class ClientRegistry:
    """Training clients and sampling sessions by id, with owner-checked lookups; registering a
    training client also records its training run and updates the live-clients gauge."""

    def __init__(self, base_models: Iterable[str], store: MetadataStore, gauge: Gauge) -> None:
        self.training: dict[str, TrainingModel] = {}
        self.samplers: dict[str, SamplerSession] = {}
        self._base_models = list(base_models)
        self._store = store
        self._gauge = gauge

    def add_training(self, model: TrainingModel, user_metadata: dict[str, str] | None) -> None:
        """Register a live training client and record its training run."""
        self.training[model.model_id] = model
        self._count()
        self._store.put_run(
            RunRecord(
                training_run_id=model.model_id,
                session_id=model.session_id,
                base_model=model.base_model,
                owner=model.owner,
                lora=model.lora,
                user_metadata=user_metadata,
            )
        )

    def remove_training(self, model_id: str) -> None:
        """Forget an unloaded training client (its run stays recorded)."""
        del self.training[model_id]
        self._count()

    def training_model(self, model_id: str) -> TrainingModel:
        """The caller's live training client (another tenant's answers as unknown)."""
        model = self.training.get(model_id)
        if model is None or model.owner != current_tenant():
            raise NotFoundError(f"model_id {model_id!r} is unknown")
        return model

    def base_model_of(self, model_id: str) -> str | None:
        """The base model of a live training client, whoever owns it (for metric labels)."""
        model = self.training.get(model_id)
        return None if model is None else model.base_model

    def add_sampler(self, session: SamplerSession) -> None:
        """Register a sampling session under its id; the same tenant may replace its own (a
        retried create), nobody may replace another tenant's (it answers as unknown)."""
        existing = self.samplers.get(session.sampler_id)
        if existing is not None and existing.owner != session.owner:
            raise NotFoundError(f"session of sampling_session_id {session.sampler_id!r} is unknown")
        self.samplers[session.sampler_id] = session

    def sampler(self, sampler_id: str) -> SamplerSession:
        """The caller's sampling session (another tenant's answers as unknown)."""
        session = self.samplers.get(sampler_id)
        if session is None or session.owner != current_tenant():
            raise NotFoundError(f"sampling_session_id {sampler_id!r} is unknown")
        return session

    def _count(self) -> None:
        for name in self._base_models:
            live = sum(1 for m in self.training.values() if m.base_model == name)
            self._gauge.labels(name).set(live)
