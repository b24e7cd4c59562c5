"""Load balancing and failover over one base model's sampler replicas (used by the coordinator).

Each request goes to the live replica with the fewest requests in flight (ties rotate), so
concurrent rollouts spread over every replica. A replica whose actor died is marked dead and the
request is retried on another one, after making sure the adapter is loaded there: a sampling
client never sees a replica failure while any replica lives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Protocol

from tinsmith.errors import NotFoundError, WorkerError
from tinsmith.types.internal import AdapterSource, SampleWork
from tinsmith.types.sampling import SampleResponse

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


class _RemoteMethod(Protocol):
    def remote(self, *args: object) -> asyncio.Future[object]: ...


class ReplicaHandle(Protocol):
    """The slice of a sampler actor handle the pool uses."""

    def __getattr__(self, name: str) -> _RemoteMethod: ...


def replica_died(exc: BaseException) -> bool:
    """True if ``exc`` says the actor itself is gone (not that the request was bad)."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


class SamplerPool:
    def __init__(self, replicas: list[ReplicaHandle]) -> None:
        self.replicas = list(replicas)
        self.alive = [True] * len(replicas)
        self.inflight = [0] * len(replicas)
        self.served = [0] * len(replicas)
        self.sources: dict[str, AdapterSource] = {}
        self._loaded: list[set[str]] = [set() for _ in replicas]
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self.replicas)

    def knows(self, key: str) -> bool:
        return key in self.sources or any(key in loaded for loaded in self._loaded)

    async def load(self, key: str, source: AdapterSource | ObjectRef[AdapterSource]) -> None:
        """Load an adapter on every live replica (the weight sync); dead replicas are skipped.

        ``source`` may be an object reference (an in-memory adapter from a trainer): Ray hands
        each replica the value straight from the object store. Only path and archive sources are
        kept for reloading later; in-memory ones are not pinned in the object store.
        """
        if isinstance(source, AdapterSource):
            self.sources[key] = source
        live = [i for i, ok in enumerate(self.alive) if ok]
        results = await asyncio.gather(
            *[self.replicas[i].load_adapter.remote(key, source) for i in live], return_exceptions=True
        )
        for i, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                if not replica_died(result):
                    raise result
                self._mark_dead(i, result)
            else:
                self._loaded[i].add(key)
        if not any(self.alive):
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

    async def sample(self, work: SampleWork) -> SampleResponse:
        tried: set[int] = set()
        while (index := self._pick(tried)) is not None:
            tried.add(index)
            replica = self.replicas[index]
            self.inflight[index] += 1
            try:
                key = work.adapter_key
                if key is not None and key not in self._loaded[index]:
                    source = self.sources.get(key)
                    if source is None:
                        raise NotFoundError(f"sampler weights {key!r} are not available on any live replica")
                    await replica.load_adapter.remote(key, source)
                    self._loaded[index].add(key)
                result = await replica.sample.remote(work)
            except Exception as exc:
                if not replica_died(exc):
                    raise
                self._mark_dead(index, exc)
                continue
            finally:
                self.inflight[index] -= 1
            self.served[index] += 1
            assert isinstance(result, SampleResponse)
            return result
        raise WorkerError("no live sampler replica could serve the request (every replica has died)")
