"""The live training clients and sampling sessions of this server process, and who owns each.

Every lookup for a request compares the owner with the request's tenant: another tenant's client
or session answers as unknown, so a tenant cannot learn what others have. Each tenant may hold a
bounded number of each (429 for one training client too many; a new sampling session makes the
tenant's least recently used one be forgotten), and a session that goes quiet (no heartbeat, no
request) for ``limits.session_timeout_seconds`` is closed: its training clients are unloaded
and its sampling sessions forgotten, so abandoned clients do not hold trainer memory forever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace

from prometheus_client import Gauge

from tinsmith.cluster.auth import current_tenant
from tinsmith.errors import ConflictError, NotFoundError, TooManyRequestsError, UserInputError
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
    follows: str | None = None  # inflight: the training client whose newest weights it samples

    @property
    def session_id(self) -> str:
        """The session it was created in (its id is ``<session>:sample:<n>``)."""
        return self.sampler_id.rsplit(":sample:", 1)[0]


@dataclass(frozen=True)
class ClientLimits:
    """How many live training clients (more: 429) and sampling sessions (more: the least
    recently used is forgotten) one tenant may hold, and how long a session may stay quiet
    before it is closed (0: never)."""

    training_per_tenant: int = 64
    samplers_per_tenant: int = 256
    session_timeout_seconds: float = 0.0


class ClientRegistry:
    """Training clients and sampling sessions by id, with owner-checked lookups; registering a
    training client also records its training run and updates the live-clients gauge."""

    def __init__(
        self,
        base_models: Iterable[str],
        store: MetadataStore,
        gauge: Gauge,
        limits: ClientLimits | None = None,
    ) -> None:
        self.training: dict[str, TrainingModel] = {}
        self.samplers: dict[str, SamplerSession] = {}
        # training client -> (seq_id, adapter key) of its newest inflight save
        self._inflight: dict[str, tuple[int, str]] = {}
        self.limits = limits or ClientLimits()
        self._last_seen: dict[str, float] = {}  # session id -> monotonic time of its last sign
        self._base_models = list(base_models)
        self._store = store
        self._gauge = gauge

    def touch(self, session_id: str) -> None:
        """The session is alive (a heartbeat, or a request naming it or one of its clients)."""
        self._last_seen[session_id] = time.monotonic()

    def check_training_capacity(self, owner: str) -> None:
        """429 when ``owner`` already holds its limit of live training clients."""
        live = sum(1 for m in self.training.values() if m.owner == owner)
        if live >= self.limits.training_per_tenant:
            raise TooManyRequestsError(
                f"tenant {owner!r} has {live} live training clients "
                f"(limits.max_training_clients_per_tenant = {self.limits.training_per_tenant}); "
                "unload some, or let their sessions end, first"
            )

    def expire_quiet_sessions(self) -> list[TrainingModel]:
        """Close every session quiet for longer than the timeout: forget its sampling sessions
        and return its training clients, which the caller unloads (then ``remove_training``)."""
        timeout = self.limits.session_timeout_seconds
        if timeout <= 0:
            return []
        cutoff = time.monotonic() - timeout
        quiet = {sid for sid, seen in self._last_seen.items() if seen < cutoff}
        for session_id in quiet:
            del self._last_seen[session_id]
            record = self._store.get_session(session_id)
            if record is not None and record.state == "active":
                record.state = "cancelled"
                record.detail = f"no heartbeat or request for {timeout:g} s (the session timeout)"
                self._store.update_session(record)
        for sampler_id in [k for k, s in self.samplers.items() if s.session_id in quiet]:
            del self.samplers[sampler_id]
        return [m for m in self.training.values() if m.session_id in quiet]

    @contextlib.asynccontextmanager
    async def creating(
        self, model: TrainingModel, user_metadata: dict[str, str] | None
    ) -> AsyncIterator[None]:
        """Register a training client and record its run for the time its adapter is created on
        the ranks (the body); unregistered again if that fails. Refused before any work: an id
        that is live, or whose run another tenant owns."""
        if model.model_id in self.training:
            raise UserInputError(f"model {model.model_id!r} already exists (model_seq_id reused)")
        self.check_training_capacity(model.owner)
        run = RunRecord(
            training_run_id=model.model_id,
            session_id=model.session_id,
            base_model=model.base_model,
            owner=model.owner,
            lora=model.lora,
            user_metadata=user_metadata,
        )
        try:
            self._store.put_run(run)
        except ConflictError as exc:
            raise UserInputError(str(exc)) from exc
        self.training[model.model_id] = model
        self.touch(model.session_id)
        self._count()
        try:
            yield
        except BaseException:
            self.remove_training(model.model_id)
            raise

    def remove_training(self, model_id: str) -> None:
        """Forget an unloaded training client (its run stays recorded)."""
        self.training.pop(model_id, None)
        self._count()

    def training_model(self, model_id: str) -> TrainingModel:
        """The caller's live training client (another tenant's answers as unknown)."""
        model = self.training.get(model_id)
        if model is None or model.owner != current_tenant():
            run = self._store.get_run(model_id) if model is None else None
            if run is not None and run.owner == current_tenant():
                raise NotFoundError(
                    f"model_id {model_id!r} is no longer loaded (its session went quiet for "
                    "longer than the server's session timeout, or the server restarted); "
                    "create a training client from its last saved state"
                )
            raise NotFoundError(f"model_id {model_id!r} is unknown")
        self.touch(model.session_id)
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
        if existing is None:
            mine = [k for k, s in self.samplers.items() if s.owner == session.owner]
            if len(mine) >= self.limits.samplers_per_tenant:
                # Not a 429: an RL loop makes one per weight sync and never ends them, and one
                # is recreated in a call. The least recently used one is forgotten instead.
                del self.samplers[mine[0]]
        else:
            del self.samplers[session.sampler_id]  # re-added last: most recently used
        self.samplers[session.sampler_id] = session
        self._store.add_sampler(session.sampler_id, session.session_id)
        self.touch(session.session_id)

    def sampler(self, sampler_id: str) -> SamplerSession:
        """The caller's sampling session (another tenant's answers as unknown); an inflight one
        with the newest weights its training client has saved inflight."""
        session = self.samplers.get(sampler_id)
        if session is None or session.owner != current_tenant():
            raise NotFoundError(f"sampling_session_id {sampler_id!r} is unknown")
        self.samplers[sampler_id] = self.samplers.pop(sampler_id)  # most recently used last
        self.touch(session.session_id)
        if session.follows is not None and session.follows in self._inflight:
            session = replace(session, adapter_key=self._inflight[session.follows][1])
        return session

    def publish_inflight(self, model_id: str, seq_id: int, key: str) -> None:
        """``key`` (synced to every replica) is now ``model_id``'s inflight weights, for every
        inflight sampler that follows it, unless a later save (by ``seq_id``) came first."""
        current = self._inflight.get(model_id)
        if current is None or seq_id >= current[0]:
            self._inflight[model_id] = (seq_id, key)

    def _count(self) -> None:
        for name in self._base_models:
            live = sum(1 for m in self.training.values() if m.base_model == name)
            self._gauge.labels(name).set(live)
