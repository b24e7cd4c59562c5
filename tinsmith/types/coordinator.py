"""The seam between the API server and a base model's coordinator: one typed method per operation.

The server holds a ``CoordinatorAPI`` per base model. In a deployment it is
``tinsmith.cluster.coordinator_handle.RayCoordinatorHandle`` (each method awaits the Ray actor's
method of the same name); the coordinator actor itself (``tinsmith.actors.coordinator``)
implements it, and so does the tests' shared fake (``tests/fakes.py``); mypy checks both.
"""

from __future__ import annotations

from typing import NoReturn, Protocol

from tinsmith.types.archives import ArchiveRef
from tinsmith.types.internal import (
    AdapterSource,
    CheckpointMeta,
    ModelStatus,
    SampleWork,
    SavedCheckpoint,
)
from tinsmith.types.sampling import SampleResponse
from tinsmith.types.training import (
    AdamParams,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
)


class CoordinatorAPI(Protocol):
    """What the server may ask of one base model's coordinator.

    Methods that take a ``seq_id`` run in the training client's seq_id order (1, 2, 3, ...); each
    seq_id is consumed exactly once, also by a request that fails.
    """

    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        """A new training client: its adapter and optimizer on every trainer rank."""
        ...

    async def unload_model(self, model_id: str) -> None:
        """Free a training client's adapter and optimizer state."""
        ...

    async def create_from_checkpoint(
        self, model_id: str, lora: LoraConfig, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """A new training client set from a stored checkpoint; returns its optimizer step."""
        ...

    async def load_checkpoint(
        self, model_id: str, seq_id: int | None, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """Replace an existing client's adapter (and optimizer) from a checkpoint; its step."""
        ...

    async def save_checkpoint(
        self,
        model_id: str,
        seq_id: int | None,
        archive: ArchiveRef,
        meta: CheckpointMeta,
        with_optimizer: bool,
    ) -> SavedCheckpoint:
        """Write the adapter (and optimizer state) as an archive in storage."""
        ...

    async def forward_backward(
        self, model_id: str, seq_id: int | None, fb: ForwardBackwardInput, forward_only: bool
    ) -> ForwardBackwardOutput:
        """Run (and unless ``forward_only``, accumulate gradients of) one batch of datums."""
        ...

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        """One AdamW step over the gradients accumulated since the last; returns its metrics."""
        ...

    async def sync_to_samplers(self, model_id: str, seq_id: int | None, key: str) -> None:
        """Export the adapter to every sampler replica under ``key`` (returns once all have it)."""
        ...

    async def refuse(self, model_id: str, seq_id: int | None, message: str) -> NoReturn:
        """Fail a training request the server answers itself: consume its seq_id in order (so
        the client's later requests are not left waiting), then raise ``UserInputError``."""
        ...

    async def sample(self, work: SampleWork, source: AdapterSource | None) -> SampleResponse:
        """Sample on the least-loaded live replica (loading the adapter from ``source`` first)."""
        ...

    async def status(self) -> ModelStatus:
        """Every live worker's status and the replicas' and trainers' restart counts."""
        ...
