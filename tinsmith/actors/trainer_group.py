"""A model's trainer ranks as one unit that survives the death of any of them.

Every call the coordinator makes to its trainer ranks goes through ``TrainerGroup.call``. When a
rank dies (its process is killed, its node goes away), the call fails at once with a retryable
``WorkerError`` naming what happened, instead of waiting on the surviving ranks (which would
hang in a collective), and the group restarts: every rank is killed and created anew with a
fresh torch.distributed rendezvous, each training client's adapter is re-created and set to its
latest snapshot (weights and AdamW state, taken after every optimizer step and every load), and
only then do queued calls proceed. A rank that dies while the group is idle is found by a
periodic ping. Gradients accumulated since the last optimizer step are lost; the coordinator
tells the client to repeat its forward_backward.

Snapshots stay in Ray's object store, owned by the coordinator (so they outlive the trainer
process that made them); the coordinator never copies them into its own memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from tinsmith.actors.sampler_pool import ReplicaHandle as _Handle
from tinsmith.actors.sampler_pool import actor_died
from tinsmith.errors import WorkerError
from tinsmith.types.internal import AdapterSpec

if TYPE_CHECKING:
    from ray import ObjectRef

    from tinsmith.types.internal import AdapterSnapshot

log = logging.getLogger(__name__)

RESTART_ATTEMPTS = 3
WATCH_SECONDS = 5.0


class TrainerSpawner(Protocol):
    """Creates every trainer rank anew (``tinsmith.cluster.placement.TrainerFactory``)."""

    def rendezvous(self) -> Awaitable[tuple[str, int]]: ...

    def spawn(self, master_addr: str, master_port: int) -> list[_Handle]: ...


class TrainerGroup:
    def __init__(
        self,
        base_model: str,
        ranks: list[_Handle],
        spawner: TrainerSpawner | None,
        adapters: Callable[[], dict[str, AdapterSpec]],
    ) -> None:
        """``adapters`` lists what a restart must re-create (model_id -> spec)."""
        self.base_model = base_model
        self.ranks = list(ranks)
        self.spawner = spawner
        self.restarts = 0
        self.snapshots: dict[str, ObjectRef[AdapterSnapshot]] = {}
        self.lost: dict[str, str] = {}  # model_id -> why its state could not be restored
        self._adapters = adapters
        self._recovery: asyncio.Task[None] | None = None
        self._broken: str | None = None
        self._in_flight = 0
        self._watcher: asyncio.Task[None] | None = None
        self.on_restart: Callable[[], None] = lambda: None  # called as a restart begins

    def watch(self) -> None:
        """Start the idle-time liveness check (needs the running event loop)."""
        if self.spawner is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def call(
        self,
        what: str,
        method: Callable[[int, _Handle], Awaitable[object]],
        only_rank0: bool = False,
    ) -> list[object]:
        """``method(index, rank)`` on every rank (or rank 0); results in rank order. Waits out a
        restart first."""
        await self.ready()
        ranks = self.ranks[:1] if only_rank0 else self.ranks
        self._in_flight += 1
        try:
            tasks = [asyncio.ensure_future(method(i, r)) for i, r in enumerate(ranks)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for index, task in enumerate(tasks):
                if task.done() and not task.cancelled() and actor_died(exc := task.exception()):  # type: ignore[arg-type]
                    for other in tasks:
                        other.cancel()
                    reason = f"trainer rank {index} of {self.base_model} died during {what} ({type(exc).__name__})"
                    self.restart(reason)
                    raise WorkerError(
                        f"{reason}; the trainer ranks are restarting and every training client is restored to "
                        "its last optimizer step: retry the request"
                    ) from exc
            return list(await asyncio.gather(*tasks))
        finally:
            self._in_flight -= 1

    async def snapshot(self, model_id: str, adapter_id: str) -> None:
        """Take the adapter's snapshot (a collective on every rank) and keep rank 0's.

        Rank 0 answers with two objects: a small acknowledgement, awaited here so that a death
        is seen, and the snapshot itself, left in the object store.
        """
        kept: list[ObjectRef[AdapterSnapshot]] = []

        def take(index: int, rank: _Handle) -> Awaitable[object]:
            if index:
                return rank.snapshot.remote(adapter_id)
            pair = rank.snapshot.options(num_returns=2).remote(adapter_id)
            ack, snap = cast("tuple[Awaitable[object], ObjectRef[AdapterSnapshot]]", pair)
            kept.append(snap)
            return ack

        await self.call("snapshot", take)
        self.snapshots[model_id] = kept[0]

    def forget(self, model_id: str) -> None:
        self.snapshots.pop(model_id, None)
        self.lost.pop(model_id, None)

    async def ready(self) -> None:
        """Return once no restart is under way; raise if the last one failed for good."""
        while self._recovery is not None and not self._recovery.done():
            await asyncio.shield(self._recovery)
        if self._broken is not None:
            raise WorkerError(self._broken)

    def restart(self, reason: str) -> None:
        """Begin restarting every rank (once, however many calls saw the death)."""
        if self.spawner is None:
            self._broken = f"{reason}; this deployment cannot restart trainers: restart the server"
            return
        if self._recovery is None or self._recovery.done():
            self.on_restart()
            self._recovery = asyncio.get_running_loop().create_task(self._restart(reason))

    async def _restart(self, reason: str) -> None:
        import ray

        assert self.spawner is not None
        log.error("%s: restarting all %d trainer ranks", reason, len(self.ranks))
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            for rank in self.ranks:
                if isinstance(
                    rank, ray.actor.ActorHandle
                ):  # the survivors too: their group is broken
                    try:
                        ray.kill(rank, no_restart=True)
                    except Exception:
                        log.debug("trainer rank already gone")
            try:
                addr, port = await self.spawner.rendezvous()
                self.ranks = self.spawner.spawn(addr, port)
                await asyncio.gather(*[r.ping.remote() for r in self.ranks])
                for model_id, spec in self._adapters().items():
                    await asyncio.gather(*[r.create_adapter.remote(spec) for r in self.ranks])
                    snap = self.snapshots.get(model_id)
                    if snap is None:
                        continue
                    try:
                        await asyncio.gather(
                            *[r.restore_snapshot.remote(spec.adapter_id, snap) for r in self.ranks]
                        )
                    except Exception as exc:
                        if actor_died(exc):
                            raise
                        # e.g. the snapshot's node went away with the rank: this client alone is lost
                        self.lost[model_id] = (
                            f"its last snapshot could not be restored ({type(exc).__name__})"
                        )
                        log.error("training client %s not restored: %s", model_id, exc)
            except Exception:
                log.exception("trainer restart attempt %d of %d failed", attempt, RESTART_ATTEMPTS)
                await asyncio.sleep(2.0 * attempt)
                continue
            self.restarts += 1
            self._broken = None
            log.warning(
                "trainer ranks of %s restarted (%d clients restored)",
                self.base_model,
                len(self._adapters()),
            )
            return
        self._broken = f"{reason}; restarting the trainer ranks failed {RESTART_ATTEMPTS} times (see the server log)"

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if (
                self._in_flight
                or (self._recovery is not None and not self._recovery.done())
                or self._broken
            ):
                continue
            pings = [asyncio.ensure_future(r.ping.remote()) for r in self.ranks]
            await asyncio.wait(pings, timeout=60.0)
            for index, ping in enumerate(pings):
                if ping.done() and not ping.cancelled() and actor_died(ping.exception()):  # type: ignore[arg-type]
                    self.restart(f"trainer rank {index} of {self.base_model} died while idle")
                    break
