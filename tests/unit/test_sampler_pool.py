"""SamplerPool with in-process fake replicas: least-loaded spreading, failover to live replicas,
replacement, the pool as the one holder of the current replicas (the coordinator's status and
shutdown read them from it). (The fakes stand in for actor handles only; real replicas are
exercised in tests/integration.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine

import pytest
from ray.exceptions import ActorDiedError

from tinsmith.actors import sampler_pool
from tinsmith.actors.coordinator import Coordinator
from tinsmith.actors.sampler_pool import SamplerPool
from tinsmith.errors import WorkerError
from tinsmith.types.internal import AdapterSource, BatchLayout, SampleWork, WorkerStatus
from tinsmith.types.sampling import SampledSequence, SampleResponse


class _Method:
    def __init__(self, replica: FakeReplica, name: str) -> None:
        self.replica, self.name = replica, name

    def remote(self, *args: object) -> Coroutine[object, object, object]:
        return getattr(self.replica, "_" + self.name)(*args)  # type: ignore[no-any-return]


class FakeReplica:
    def __init__(self, index: int, pid: int = 0) -> None:
        self.index = index
        self.pid = pid
        self.dead = False
        self.adapters: set[str] = set()
        self.calls = 0
        self.started = asyncio.Event()
        self.started.set()

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)

    async def _start(self) -> int:
        await self.started.wait()
        return self.index

    async def _status(self) -> WorkerStatus:
        if self.dead:
            raise ActorDiedError()
        return WorkerStatus(
            kind="sampler", index=self.index, pid=self.pid, rss_bytes=0, adapters=len(self.adapters)
        )

    async def _load_adapter(self, key: str, source: AdapterSource) -> None:
        if self.dead:
            raise ActorDiedError()
        self.adapters.add(key)

    async def _sample(self, work: SampleWork) -> SampleResponse:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.dead:
            raise ActorDiedError()
        assert work.adapter_key is None or work.adapter_key in self.adapters
        return SampleResponse(
            sequences=[SampledSequence(stop_reason="length", tokens=[self.index])]
        )


def _work(key: str | None = None) -> SampleWork:
    return SampleWork(
        prompt_tokens=[1],
        num_samples=1,
        max_tokens=1,
        temperature=0.0,
        top_k=-1,
        top_p=1.0,
        seed=None,
        stop_strings=[],
        stop_token_ids=[],
        prompt_logprobs=False,
        topk_prompt_logprobs=0,
        topk_sample_logprobs=0,
        adapter_key=key,
    )


def test_concurrent_requests_spread_over_replicas() -> None:
    replicas = [FakeReplica(0), FakeReplica(1), FakeReplica(2)]
    pool = SamplerPool(replicas)  # type: ignore[arg-type]

    async def run() -> list[SampleResponse]:
        return list(await asyncio.gather(*[pool.sample(_work()) for _ in range(30)]))

    asyncio.run(run())
    assert pool.served == [10, 10, 10]


def test_dead_replica_requests_are_retried_elsewhere() -> None:
    replicas = [FakeReplica(0), FakeReplica(1)]
    pool = SamplerPool(replicas)  # type: ignore[arg-type]

    async def run() -> list[SampleResponse]:
        await pool.load("v1", AdapterSource(path="/x"))
        replicas[0].dead = True
        return list(await asyncio.gather(*[pool.sample(_work("v1")) for _ in range(8)]))

    out = asyncio.run(run())
    assert all(r.sequences[0].tokens == [1] for r in out)
    assert pool.alive == [False, True] and pool.served == [0, 8]


def test_all_replicas_dead_is_a_worker_error() -> None:
    replicas = [FakeReplica(0)]
    replicas[0].dead = True
    pool = SamplerPool(replicas)  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match="no live sampler replica"):
        asyncio.run(pool.sample(_work()))


def test_in_memory_adapters_are_known_once_loaded_but_not_pinned() -> None:
    replicas = [FakeReplica(0), FakeReplica(1)]
    pool = SamplerPool(replicas)  # type: ignore[arg-type]
    blob_ref = object()  # stands in for an ObjectRef, which Ray resolves on each replica
    asyncio.run(pool.load("ephemeral", blob_ref))  # type: ignore[arg-type]
    assert pool.knows("ephemeral") and "ephemeral" not in pool.sources
    assert all("ephemeral" in r.adapters for r in replicas)


def test_a_dead_replica_is_replaced_with_its_adapters() -> None:
    replicas = [FakeReplica(0), FakeReplica(1)]
    spawned: list[FakeReplica] = []

    def spawn(index: int) -> FakeReplica:
        spawned.append(FakeReplica(index))
        return spawned[-1]

    pool = SamplerPool(replicas, spawn)  # type: ignore[arg-type]

    async def run() -> None:
        await pool.load("stored", AdapterSource(path="/x"))
        await pool.load("in-memory", object())  # type: ignore[arg-type]
        replicas[0].dead = True
        await asyncio.gather(*[pool.sample(_work("stored")) for _ in range(4)])
        for _ in range(100):
            if pool.alive == [True, True]:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert pool.alive == [True, True] and pool.restarts == [1, 0]
    assert spawned[0].adapters == {"stored", "in-memory"}
    assert pool.replicas[0] is spawned[0]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 2 s")


class FakeFactory:
    """Stands in for ``SamplerFactory``: each replacement gets a new pid."""

    shm_dir = "/dev/shm/tests"

    def __init__(self) -> None:
        self.spawned: list[FakeReplica] = []

    def spawn(self, index: int) -> FakeReplica:
        self.spawned.append(FakeReplica(index, pid=100 + len(self.spawned)))
        return self.spawned[-1]


def test_status_and_shutdown_see_the_replacement_replica_not_the_dead_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[object] = []
    monkeypatch.setattr(sampler_pool, "kill_actor", killed.append)
    replicas = [FakeReplica(0, pid=10), FakeReplica(1, pid=11)]
    factory = FakeFactory()

    async def run() -> None:
        layout = BatchLayout(micro_batch_tokens=8)
        coord = Coordinator("m", 100, 64, layout, [], replicas, sampler_factory=factory)  # type: ignore[arg-type]
        replicas[0].dead = True
        await asyncio.gather(*[coord.sample(_work(), None) for _ in range(4)])
        await _until(lambda: coord.pool.alive == [True, True])
        status = await coord.status()
        assert sorted(w.pid for w in status.workers) == [11, 100]  # the new replica, live
        assert status.sampler_restarts == [1, 0]

        await coord.stop_workers()
        assert killed == [factory.spawned[0], replicas[1]]  # the replicas of now
        assert coord.pool.alive == [False, False]
        with pytest.raises(WorkerError, match="no live sampler replica"):
            await coord.sample(_work(), None)
        assert len(factory.spawned) == 1  # nothing replaced after the stop

    asyncio.run(run())


def test_closing_the_pool_also_stops_a_replacement_still_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[object] = []
    monkeypatch.setattr(sampler_pool, "kill_actor", killed.append)
    replicas = [FakeReplica(0), FakeReplica(1)]
    starting: list[FakeReplica] = []

    def spawn(index: int) -> FakeReplica:
        starting.append(FakeReplica(index))
        starting[-1].started.clear()  # its start never finishes
        return starting[-1]

    pool = SamplerPool(replicas, spawn)  # type: ignore[arg-type]

    async def run() -> None:
        replicas[1].dead = True
        await asyncio.gather(*[pool.sample(_work()) for _ in range(4)])
        await _until(lambda: bool(starting))
        await pool.close()
        assert killed == replicas + starting and pool.replicas == replicas

    asyncio.run(run())
