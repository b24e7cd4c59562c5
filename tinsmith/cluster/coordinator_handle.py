"""The server's ``CoordinatorAPI`` in a deployment: each method awaits the coordinator actor's
method of the same name.

Ray's ``ActorHandle`` types every attribute as ``Never``, which would leave these calls unchecked;
``_CoordinatorActor`` names the remote methods this handle calls, so a renamed one is a mypy error
here, and each result is cast to the type the actor's method returns.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

from tinsmith.errors import UserInputError
from tinsmith.types.archives import ArchiveRef
from tinsmith.types.coordinator import CoordinatorAPI
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

if TYPE_CHECKING:
    from ray.actor import ActorHandle


class _RemoteMethod(Protocol):
    def remote(self, *args: object) -> Awaitable[object]: ...


class _CoordinatorActor(Protocol):
    """The remote methods of ``tinsmith.actors.coordinator.Coordinator`` this handle calls."""

    create_model: _RemoteMethod
    unload_model: _RemoteMethod
    create_from_checkpoint: _RemoteMethod
    load_checkpoint: _RemoteMethod
    save_checkpoint: _RemoteMethod
    forward_backward: _RemoteMethod
    optim_step: _RemoteMethod
    sync_to_samplers: _RemoteMethod
    refuse: _RemoteMethod
    sample: _RemoteMethod
    status: _RemoteMethod


class RayCoordinatorHandle:
    """A coordinator actor seen through ``CoordinatorAPI`` (errors arrive as Ray wraps them; the
    server's future guard unwraps them)."""

    def __init__(self, actor: ActorHandle) -> None:
        self._actor = cast(_CoordinatorActor, actor)

    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        """See ``CoordinatorAPI.create_model``."""
        await self._actor.create_model.remote(model_id, lora)

    async def unload_model(self, model_id: str) -> None:
        """See ``CoordinatorAPI.unload_model``."""
        await self._actor.unload_model.remote(model_id)

    async def create_from_checkpoint(
        self, model_id: str, lora: LoraConfig, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """See ``CoordinatorAPI.create_from_checkpoint``."""
        ref = self._actor.create_from_checkpoint.remote(model_id, lora, archive, with_optimizer)
        return cast(int, await ref)

    async def load_checkpoint(
        self, model_id: str, seq_id: int | None, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """See ``CoordinatorAPI.load_checkpoint``."""
        ref = self._actor.load_checkpoint.remote(model_id, seq_id, archive, with_optimizer)
        return cast(int, await ref)

    async def save_checkpoint(
        self,
        model_id: str,
        seq_id: int | None,
        archive: ArchiveRef,
        meta: CheckpointMeta,
        with_optimizer: bool,
    ) -> SavedCheckpoint:
        """See ``CoordinatorAPI.save_checkpoint``."""
        ref = self._actor.save_checkpoint.remote(model_id, seq_id, archive, meta, with_optimizer)
        return cast(SavedCheckpoint, await ref)

    async def forward_backward(
        self, model_id: str, seq_id: int | None, fb: ForwardBackwardInput, forward_only: bool
    ) -> ForwardBackwardOutput:
        """See ``CoordinatorAPI.forward_backward``."""
        ref = self._actor.forward_backward.remote(model_id, seq_id, fb, forward_only)
        return cast(ForwardBackwardOutput, await ref)

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        """See ``CoordinatorAPI.optim_step``."""
        return cast(dict[str, float], await self._actor.optim_step.remote(model_id, seq_id, adam))

    async def sync_to_samplers(self, model_id: str, seq_id: int | None, key: str) -> None:
        """See ``CoordinatorAPI.sync_to_samplers``."""
        await self._actor.sync_to_samplers.remote(model_id, seq_id, key)

    async def refuse(self, model_id: str, seq_id: int | None, message: str) -> NoReturn:
        """See ``CoordinatorAPI.refuse``: the actor raises; should it return, fail the same way."""
        await self._actor.refuse.remote(model_id, seq_id, message)
        raise UserInputError(message)

    async def sample(self, work: SampleWork, source: AdapterSource | None) -> SampleResponse:
        """See ``CoordinatorAPI.sample``."""
        return cast(SampleResponse, await self._actor.sample.remote(work, source))

    async def status(self) -> ModelStatus:
        """See ``CoordinatorAPI.status``."""
        return cast(ModelStatus, await self._actor.status.remote())


def _conforms(handle: RayCoordinatorHandle) -> CoordinatorAPI:
    """mypy checks here that the handle implements every ``CoordinatorAPI`` method."""
    return handle
