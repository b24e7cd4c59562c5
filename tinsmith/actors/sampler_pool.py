"""Load balancing, failover and replacement of one base model's sampler replicas.

Each request goes to the live replica with the fewest requests in flight (ties rotate), so
concurrent rollouts spread over every replica. A replica whose actor died is marked dead, the
request is retried on another one (after loading the adapter there if needed), and, given a
spawn function, a new replica is started in the dead one's place in the background and gets
every adapter the pool can still reload: stored ones (path, archive) and the most recent
in-memory versions, whose object references the pool keeps. No manual step is needed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tinsmith.errors import NotFoundError, WorkerError
from tinsmith.types.internal import AdapterSource, SampleWork
from tinsmith.types.sampling import SampleResponse

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


class _RemoteMethod(Protocol):
    def remote(self, *args: object) -> asyncio.Future[object]: ...

    def options(self, **options: object) -> _RemoteMethod: ...


class ReplicaHandle(Protocol):
    """The slice of a Ray actor handle tinsmith's actors use (methods are looked up by name); the
    coordinator types its trainer and sampler handles with it too."""

    def __getattr__(self, name: str) -> _RemoteMethod: ...


def actor_died(exc: BaseException | None) -> bool:
    """True if ``exc`` says the actor itself is gone (not that the request was bad)."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


def kill_actor(handle: ReplicaHandle) -> None:
    """Stop a worker for good (no Ray restart); one already gone, or a test's fake, is skipped."""
    import ray

    if not isinstance(handle, ray.actor.ActorHandle):
        return
    try:
        ray.kill(handle, no_restart=True)
    except Exception:
        log.debug("worker already gone")


KEEP_IN_MEMORY_VERSIONS = 16
REPLACEMENT_WAIT_SECONDS = 300.0  # how long a request waits for a replacement when no replica lives


class SamplerPool:
    """One base model's sampler replicas: the only holder of their current handles (a replaced
    replica's handle is swapped in here), their liveness, load and adapters."""

    def __init__(
        self, replicas: list[ReplicaHandle], spawn: Callable[[int], ReplicaHandle] | None = None
    ) -> None:
        self.replicas = list(replicas)
        self.alive = [True] * len(replicas)
        self.inflight = [0] * len(replicas)
        self.served = [0] * len(replicas)
        self.restarts = [0] * len(replicas)
        self._nodes: list[str | None] = [None] * len(replicas)  # a replica's node, asked once
        self.sources: dict[str, AdapterSource] = {}
        self._blobs: OrderedDict[str, ObjectRef[AdapterSource]] = OrderedDict()
        self._loaded: list[set[str]] = [set() for _ in replicas]
        self._turn = itertools.count()
        self._spawn = spawn
        self._respawning: set[int] = set()
        self._starting: dict[int, ReplicaHandle] = {}  # replacements not yet in ``replicas``
        self._background: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.replicas)

    def live_replicas(self) -> list[ReplicaHandle]:
        """The current handle of every live replica (a replaced one's successor, not the dead)."""
        return [r for r, ok in zip(self.replicas, self.alive, strict=True) if ok]

    async def close(self) -> None:
        """Stop every replica, and any replacement being started; none is started afterwards."""
        self._spawn = None
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background))
        for handle in [*self.replicas, *self._starting.values()]:
            kill_actor(handle)
        self._starting.clear()
        self._respawning.clear()
        self.alive = [False] * len(self.replicas)

    def knows(self, key: str) -> bool:
        return (
            key in self.sources
            or key in self._blobs
            or any(key in loaded for loaded in self._loaded)
        )

    async def live_nodes(self) -> list[str]:
        """The node of every live replica (asked once per replica: each weight sync checks)."""
        live = [i for i, ok in enumerate(self.alive) if ok]
        unknown = [i for i in live if self._nodes[i] is None]
        found = await asyncio.gather(*[self.replicas[i].node_id.remote() for i in unknown])
        for i, node in zip(unknown, found, strict=True):
            self._nodes[i] = str(node)
        return [str(self._nodes[i]) for i in live]

    def _reloadable(self, key: str) -> AdapterSource | ObjectRef[AdapterSource] | None:
        return self.sources.get(key) or self._blobs.get(key)

    async def load(self, key: str, source: AdapterSource | ObjectRef[AdapterSource]) -> None:
        """Load an adapter on every live replica (the weight sync); dead replicas are skipped.

        ``source`` may be an object reference (an in-memory adapter from a trainer): Ray hands
        each replica the value straight from the object store. Path and archive sources are kept
        for reloading; of in-memory ones, the latest KEEP_IN_MEMORY_VERSIONS stay pinned.
        """
        if isinstance(source, AdapterSource):
            self.sources[key] = source
        else:
            self._blobs[key] = source
            while len(self._blobs) > KEEP_IN_MEMORY_VERSIONS:
                self._blobs.popitem(last=False)
        live = [i for i, ok in enumerate(self.alive) if ok]
        results = await asyncio.gather(
            *[self.replicas[i].load_adapter.remote(key, source) for i in live],
            return_exceptions=True,
        )
        for i, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                if not actor_died(result):
                    raise result
                self._mark_dead(i, result)
            else:
                self._loaded[i].add(key)
        if not any(self.alive) and self._spawn is None:
            raise WorkerError("every sampler replica has died; the server must be restarted")

    def _pick(self, exclude: set[int]) -> int | None:
        candidates = [i for i, ok in enumerate(self.alive) if ok and i not in exclude]
        if not candidates:
            return None
        start = next(self._turn)
        n = len(self.replicas)
        return min(candidates, key=lambda i: (self.inflight[i], (i - start) % n))

    def _mark_dead(self, index: int, exc: BaseException) -> None:
        if self.alive[index]:
            log.error("sampler replica %d died (%s); its requests go to the others", index, exc)
        self.alive[index] = False
        if self._spawn is not None and index not in self._respawning:
            self._respawning.add(index)
            task = asyncio.ensure_future(self._respawn(index))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _respawn(self, index: int) -> None:
        """Start a replacement for replica ``index`` and give it every reloadable adapter."""
        spawn = self._spawn
        assert spawn is not None
        delay = 2.0
        while True:
            try:
                handle = self._starting[index] = spawn(index)
                await handle.start.remote()
                loaded: set[str] = set()
                for key in [*self.sources, *self._blobs]:
                    source = self._reloadable(key)
                    if source is not None:
                        await handle.load_adapter.remote(key, source)
                        loaded.add(key)
                self.replicas[index], self._loaded[index], self._nodes[index] = handle, loaded, None
                del self._starting[index]
                self.alive[index] = True
                self.restarts[index] += 1
                self._respawning.discard(index)
                log.info("sampler replica %d replaced (%d adapters reloaded)", index, len(loaded))
                return
            except Exception:
                log.exception(
                    "replacing sampler replica %d failed; retrying in %.0f s", index, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _wait_for_a_replica(self, timeout: float) -> None:
        """With every replica dead but replacements starting, wait (bounded) for one to come up."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (
            not any(self.alive)
            and self._respawning
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.5)

    async def sample(self, work: SampleWork) -> SampleResponse:
        tried: set[int] = set()
        waited = False
        if not any(self.alive):
            await self._wait_for_a_replica(REPLACEMENT_WAIT_SECONDS)
        while (index := self._pick(tried)) is not None:
            tried.add(index)
            replica = self.replicas[index]
            self.inflight[index] += 1
            try:
                key = work.adapter_key
                if key is not None and key not in self._loaded[index]:
                    source = self._reloadable(key)
                    if source is None:
                        raise NotFoundError(
                            f"sampler weights {key!r} are not available on any live replica"
                        )
                    await replica.load_adapter.remote(key, source)
                    self._loaded[index].add(key)
                result = await replica.sample.remote(work)
            except Exception as exc:
                if not actor_died(exc):
                    raise
                self._mark_dead(index, exc)
                if not any(self.alive) and not waited:  # once: a replacement gets one try
                    waited = True
                    await self._wait_for_a_replica(REPLACEMENT_WAIT_SECONDS)
                    tried.clear()
                continue
            finally:
                self.inflight[index] -= 1
            self.served[index] += 1
            assert isinstance(result, SampleResponse)
            return result
        raise WorkerError(
            "no live sampler replica could serve the request (every replica has died)"
        )
