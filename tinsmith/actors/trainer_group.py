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
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from tinsmith.actors.sampler_pool import ReplicaHandle as _Handle
from tinsmith.actors.sampler_pool import actor_died, kill_actor
from tinsmith.errors import WorkerError
from tinsmith.types.internal import (
    AdapterSource,
    AdapterSpec,
    LoadCheckpointWork,
    OptimStepWork,
    RankResult,
    RankWork,
    SaveCheckpointWork,
    SavedCheckpoint,
)

if TYPE_CHECKING:
    from ray import ObjectRef

    from tinsmith.types.internal import AdapterSnapshot

log = logging.getLogger(__name__)

RESTART_ATTEMPTS = 3
WATCH_SECONDS = 5.0

_T = TypeVar("_T")
_Method = Callable[[int, _Handle], Awaitable[object]]


class TrainerSpawner(Protocol):
    """Creates every trainer rank anew (``tinsmith.cluster.placement.TrainerFactory``)."""

    def rendezvous(self) -> Awaitable[tuple[str, int]]: ...

    def spawn(self, master_addr: str, master_port: int) -> list[_Handle]: ...


def _answer(value: object, kind: type[_T], what: str) -> _T:
    """A rank's answer as the type its method returns (anything else is a bug, said so)."""
    if not isinstance(value, kind):
        raise WorkerError(
            f"a trainer rank answered {type(value).__name__} to {what}, not {kind.__name__}"
        )
    return value


class TrainerGroup:
    """One model's trainer ranks: the only holder of their current handles (a restart replaces
    them here), with one typed method per trainer operation, each a call on every rank."""

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
        self._closed = False
        self._in_flight = 0
        self._watcher: asyncio.Task[None] | None = None
        self.on_restart: Callable[[], None] = lambda: None  # called as a restart begins

    def watch(self) -> None:
        """Start the idle-time liveness check (needs the running event loop)."""
        if self.spawner is not None and self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    # ----- one method per trainer operation ------------------------------------------------
    async def create_adapter(self, spec: AdapterSpec) -> None:
        """A new adapter and its optimizer on every rank."""
        await self.call("create_model", lambda _, rank: rank.create_adapter.remote(spec))

    async def unload_adapter(self, adapter_id: str) -> None:
        """Free an adapter and its optimizer on every rank."""
        await self.call("unload_model", lambda _, rank: rank.unload_adapter.remote(adapter_id))

    async def forward_backward(self, works: list[RankWork]) -> list[RankResult]:
        """``works[i]`` on rank i; every rank's result, in rank order."""
        what = "forward" if works[0].forward_only else "forward_backward"
        answers = await self.call(what, lambda i, rank: rank.forward_backward.remote(works[i]))
        return [_answer(a, RankResult, what) for a in answers]

    async def optim_step(self, work: OptimStepWork) -> dict[str, float]:
        """One optimizer step on every rank; rank 0's metrics."""
        answers = await self.call("optim_step", lambda _, rank: rank.optim_step.remote(work))
        metrics = _answer(answers[0], dict, "optim_step")
        return {str(k): float(v) for k, v in metrics.items()}

    async def save_checkpoint(self, work: SaveCheckpointWork) -> SavedCheckpoint:
        """Every rank gathers the state; rank 0 uploads the archive and says what it stored."""
        answers = await self.call("save_state", lambda _, rank: rank.save_checkpoint.remote(work))
        return _answer(answers[0], SavedCheckpoint, "save_state")

    async def load_checkpoint(self, work: LoadCheckpointWork) -> int:
        """Set the adapter (and optimizer) from an archive on every rank; its optimizer step."""
        answers = await self.call("load_state", lambda _, rank: rank.load_checkpoint.remote(work))
        return _answer(answers[0], int, "load_state")

    async def node_id(self) -> str:
        """Rank 0's Ray node."""
        answers = await self.call("node_id", lambda _, rank: rank.node_id.remote(), only_rank0=True)
        return str(answers[0])

    async def export_adapter(
        self, adapter_id: str, directory: str | None
    ) -> Awaitable[ObjectRef[AdapterSource]]:
        """Submit the weight-sync export to every rank now; await the result later.

        A rank runs its calls in submission order, so the export keeps the caller's place (the
        client's seq_id turn) while the caller goes on. Rank 0 answers with two objects, as for
        ``snapshot``: a small acknowledgement, awaited so that a death is seen, and the adapter's
        files, left in the object store for the samplers to fetch (never copied through here).
        Like ``call``, it fails with a retryable ``WorkerError`` (and the ranks restart) if a rank
        dies before every rank has answered.
        """
        kept: list[ObjectRef[AdapterSource]] = []

        def export(index: int, rank: _Handle) -> Awaitable[object]:
            if index:
                return rank.export_adapter.remote(adapter_id, directory)
            pair = rank.export_adapter.options(num_returns=2).remote(adapter_id, directory)
            ack, files = cast("tuple[Awaitable[object], ObjectRef[AdapterSource]]", pair)
            kept.append(files)
            return ack

        await self.ready()
        calls = self._submit(export)

        async def exported() -> ObjectRef[AdapterSource]:
            answers = await self._collect("save_weights_for_sampler", calls)
            _answer(answers[0], bool, "save_weights_for_sampler")
            return kept[0]

        return asyncio.ensure_future(exported())

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
        """Drop a client that was unloaded: a restart no longer restores it."""
        self.snapshots.pop(model_id, None)
        self.lost.pop(model_id, None)

    # ----- calls, deaths and restarts -------------------------------------------------------
    async def call(self, what: str, method: _Method, only_rank0: bool = False) -> list[object]:
        """``method(index, rank)`` on every rank (or rank 0); results in rank order. Waits out a
        restart first."""
        await self.ready()
        return await self._collect(what, self._submit(method, only_rank0))

    def _submit(self, method: _Method, only_rank0: bool = False) -> list[asyncio.Future[object]]:
        """Send ``method`` to the ranks now (a Ray actor queues calls in submission order)."""
        ranks = self.ranks[:1] if only_rank0 else self.ranks
        calls: list[asyncio.Future[object]] = [
            asyncio.ensure_future(method(i, rank)) for i, rank in enumerate(ranks)
        ]
        self._in_flight += 1
        return calls

    async def _collect(self, what: str, calls: list[asyncio.Future[object]]) -> list[object]:
        """The answers of ``_submit``'s calls. A dead rank fails the request at once (without
        waiting on the survivors, which would sit in a collective) and restarts every rank."""
        try:
            await asyncio.wait(calls, return_when=asyncio.FIRST_EXCEPTION)
            for index, task in enumerate(calls):
                if task.done() and not task.cancelled() and actor_died(exc := task.exception()):
                    for other in calls:
                        other.cancel()
                    reason = (
                        f"trainer rank {index} of {self.base_model} died during {what} "
                        f"({type(exc).__name__})"
                    )
                    self.restart(reason)
                    raise WorkerError(
                        f"{reason}; the trainer ranks are restarting and every training client "
                        "is restored to its last optimizer step: retry the request"
                    ) from exc
            return list(await asyncio.gather(*calls))
        finally:
            self._in_flight -= 1

    async def ready(self) -> None:
        """Return once no restart is under way; raise if the last one failed for good."""
        while self._recovery is not None and not self._recovery.done():
            await asyncio.wait([self._recovery])  # never cancels the restart itself
        if self._broken is not None:
            raise WorkerError(self._broken)

    def restart(self, reason: str) -> None:
        """Begin restarting every rank (once, however many calls saw the death)."""
        if self._closed:
            return
        if self.spawner is None:
            self._broken = f"{reason}; this deployment cannot restart trainers: restart the server"
            return
        if self._recovery is None or self._recovery.done():
            self.on_restart()
            self._recovery = asyncio.get_running_loop().create_task(self._restart(reason))

    async def close(self) -> None:
        """Stop every current rank (the server is shutting down); a restart under way is
        abandoned and none starts afterwards."""
        self._closed = True
        self._broken = f"the trainer ranks of {self.base_model} were stopped (server shutdown)"
        tasks = [t for t in (self._watcher, self._recovery) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for rank in self.ranks:
            kill_actor(rank)

    async def _restart(self, reason: str) -> None:
        assert self.spawner is not None
        log.error("%s: restarting all %d trainer ranks", reason, len(self.ranks))
        started = time.monotonic()
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            for rank in self.ranks:  # the survivors too: their group is broken
                kill_actor(rank)
            try:
                addr, port = await self.spawner.rendezvous()
                self.ranks = self.spawner.spawn(addr, port)
                await asyncio.gather(*[r.ping.remote() for r in self.ranks])
                await self._restore_clients()
            except Exception:
                log.exception("trainer restart attempt %d of %d failed", attempt, RESTART_ATTEMPTS)
                await asyncio.sleep(2.0 * attempt)
                continue
            self.restarts += 1
            self._broken = None
            log.warning(
                "trainer ranks of %s restarted in %.0f s (%d clients restored)",
                self.base_model,
                time.monotonic() - started,
                len(self._adapters()),
            )
            return
        self._broken = (
            f"{reason}; restarting the trainer ranks failed {RESTART_ATTEMPTS} times "
            "(see the server log)"
        )

    async def _restore_clients(self) -> None:
        """Re-create every client's adapter on the new ranks and set it to its last snapshot."""
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

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            restarting = self._recovery is not None and not self._recovery.done()
            if self._in_flight or restarting or self._broken:
                continue
            pings = [asyncio.ensure_future(r.ping.remote()) for r in self.ranks]
            await asyncio.wait(pings, timeout=60.0)
            for index, ping in enumerate(pings):
                if ping.done() and not ping.cancelled() and actor_died(ping.exception()):
                    self.restart(f"trainer rank {index} of {self.base_model} died while idle")
                    break
