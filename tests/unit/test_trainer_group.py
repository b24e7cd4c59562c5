"""The coordinator's trainer-restart logic with in-process fake ranks: a rank that dies fails the
request in flight at once with a retryable error (no waiting on the survivors), every rank is
created anew, each client's adapter is re-created and set to its last snapshot, queued requests
wait for that, and gradients lost with the old ranks are reported once; a death during the weight
sync's export fails that request (not the samplers); shutdown stops the current ranks. The real
thing (SIGKILL of a trainer process under load) is in tests/integration/test_trainer_restart.py
and second_server/test_sampler_replicas.py."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError

from tests.unit.test_coordinator_ordering import FakeTrainer, _fb
from tests.unit.test_sampler_pool import FakeReplica
from tinsmith.actors import trainer_group
from tinsmith.actors.coordinator import Coordinator
from tinsmith.errors import WorkerError
from tinsmith.types import AdamParams, LoraConfig
from tinsmith.types.internal import BatchLayout

LAYOUT = BatchLayout(micro_batch_tokens=8, max_padding_fraction=1.0)


class MortalTrainer(FakeTrainer):
    """A fake rank that can be told to die: its next call raises what Ray raises for a dead
    actor."""

    def __init__(self, log: list[str], name: str, rank: int = 0) -> None:
        super().__init__(log, rank)
        self.name = name
        self.dead = False
        self.restored: list[tuple[str, object]] = []

    def _check(self) -> None:
        if self.dead:
            raise ActorDiedError()

    def _forward_backward(self, work: object) -> object:
        self._check()
        return super()._forward_backward(work)  # type: ignore[arg-type]

    def _export_adapter(self, adapter_id: str, directory: str | None) -> object:
        self._check()
        return super()._export_adapter(adapter_id, directory)

    def _ping(self) -> str:
        self._check()
        return self.name

    def _restore_snapshot(self, adapter_id: str, snap: object) -> int:
        self.restored.append((adapter_id, snap))
        return 1


class FakeSpawner:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.generations: list[list[MortalTrainer]] = []

    async def rendezvous(self) -> tuple[str, int]:
        return "127.0.0.1", 29500 + len(self.generations)

    def spawn(self, master_addr: str, master_port: int) -> list[MortalTrainer]:
        ranks = [
            MortalTrainer(self.log, f"gen{len(self.generations) + 1}-rank{i}", i) for i in range(2)
        ]
        self.generations.append(ranks)
        return ranks


def test_a_dead_rank_fails_its_request_and_the_ranks_restart_with_every_adapter_restored() -> None:
    async def main() -> None:
        log: list[str] = []
        first = [MortalTrainer(log, "gen0-rank0"), MortalTrainer(log, "gen0-rank1", 1)]
        spawner = FakeSpawner(log)
        coord = Coordinator("m", 100, 64, LAYOUT, first, [], trainer_factory=spawner)  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        await coord.create_model("s:train:1", LoraConfig(rank=8))
        await coord.forward_backward("s:train:0", 1, _fb(2), False)
        await coord.optim_step("s:train:0", 2, AdamParams())
        kept = coord.trainers.snapshots["s:train:0"]
        assert (
            "s:train:1" not in coord.trainers.snapshots
        )  # never stepped: re-created from its seed

        await coord.forward_backward(
            "s:train:0", 3, _fb(2), False
        )  # gradients the restart will drop
        first[1].dead = True
        with pytest.raises(
            WorkerError, match=r"trainer rank 1 of m died during forward_backward.*retry"
        ):
            await asyncio.wait_for(coord.forward_backward("s:train:0", 4, _fb(2), False), timeout=5)

        # The next request waits for the restart, then is told (once) that gradients were lost.
        with pytest.raises(WorkerError, match=r"gradients .* were lost"):
            await asyncio.wait_for(coord.optim_step("s:train:0", 5, AdamParams()), timeout=5)
        assert coord.trainers.restarts == 1 and len(spawner.generations) == 1
        new = spawner.generations[0]
        assert coord.trainers.ranks == new
        assert all(
            r.restored == [("a_s_train_0", kept)] for r in new
        )  # both ranks, the kept snapshot

        # Training goes on on the new ranks; the other client, never stepped, works too.
        await coord.forward_backward("s:train:0", 6, _fb(2), False)
        assert await coord.optim_step("s:train:0", 7, AdamParams()) == {"grad_norm:mean": 1.0}
        await coord.forward_backward("s:train:1", 1, _fb(1), False)
        await coord.optim_step("s:train:1", 2, AdamParams())

    asyncio.run(main())


def test_a_rank_that_dies_while_idle_is_found_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_group, "WATCH_SECONDS", 0.01)

    async def main() -> None:
        log: list[str] = []
        first = [MortalTrainer(log, "gen0-rank0")]
        spawner = FakeSpawner(log)
        coord = Coordinator("m", 100, 64, LAYOUT, first, [], trainer_factory=spawner)  # type: ignore[arg-type]
        await coord.ping()  # start-up: begins watching
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        first[0].dead = True
        for _ in range(200):
            await asyncio.sleep(0.01)
            if coord.trainers.restarts:
                break
        assert coord.trainers.restarts == 1
        await coord.forward_backward("s:train:0", 1, _fb(1), False)  # served by the new ranks

    asyncio.run(main())


def test_without_a_spawner_a_dead_rank_is_reported_not_hung() -> None:
    async def main() -> None:
        ranks = [MortalTrainer([], "only")]
        coord = Coordinator("m", 100, 64, LAYOUT, ranks, [])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        ranks[0].dead = True
        with pytest.raises(WorkerError, match="died during forward_backward"):
            await coord.forward_backward("s:train:0", 1, _fb(1), False)
        with pytest.raises(WorkerError, match="cannot restart trainers: restart the server"):
            await asyncio.wait_for(coord.forward_backward("s:train:0", 2, _fb(1), False), timeout=5)

    asyncio.run(main())


def test_a_client_whose_snapshot_cannot_be_restored_is_reported_and_the_others_go_on() -> None:
    async def main() -> None:
        log: list[str] = []
        first = [MortalTrainer(log, "gen0-rank0")]
        spawner = FakeSpawner(log)
        coord = Coordinator("m", 100, 64, LAYOUT, first, [], trainer_factory=spawner)  # type: ignore[arg-type]
        for i in range(2):
            await coord.create_model(f"s:train:{i}", LoraConfig(rank=4))
            await coord.forward_backward(f"s:train:{i}", 1, _fb(1), False)
            await coord.optim_step(f"s:train:{i}", 2, AdamParams())

        def restore(self: MortalTrainer, adapter_id: str, snap: object) -> int:
            if adapter_id == "a_s_train_0":
                raise RuntimeError("object lost with its node")
            return 1

        original = MortalTrainer._restore_snapshot
        MortalTrainer._restore_snapshot = restore  # type: ignore[method-assign]
        try:
            first[0].dead = True
            with pytest.raises(WorkerError, match="died during"):
                await coord.forward_backward("s:train:1", 3, _fb(1), False)
            await coord.trainers.ready()
        finally:
            MortalTrainer._restore_snapshot = original  # type: ignore[method-assign]
        with pytest.raises(
            WorkerError,
            match=r"did not survive a trainer restart.*create_training_client_from_state",
        ):
            await coord.forward_backward("s:train:0", 3, _fb(1), False)
        await coord.forward_backward("s:train:1", 4, _fb(1), False)  # the other client continues
        await coord.unload_model("s:train:0")  # and the lost one can still be freed

    asyncio.run(main())


def test_a_rank_that_dies_during_the_weight_sync_export_fails_that_request_retryably() -> None:
    async def main() -> None:
        log: list[str] = []
        first = [MortalTrainer(log, "gen0-rank0"), MortalTrainer(log, "gen0-rank1", 1)]
        spawner = FakeSpawner(log)
        replica = FakeReplica(0)
        coord = Coordinator("m", 100, 64, LAYOUT, first, [replica], trainer_factory=spawner)  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        await coord.forward_backward("s:train:0", 1, _fb(2), False)
        await coord.optim_step("s:train:0", 2, AdamParams())
        first[1].dead = True
        with pytest.raises(
            WorkerError, match=r"trainer rank 1 of m died during save_weights_for_sampler.*retry"
        ):
            await asyncio.wait_for(coord.sync_to_samplers("s:train:0", 3, "v1"), timeout=5)
        # The samplers were not blamed for the trainer's death, nor given a half-made export.
        assert coord.pool.alive == [True] and not replica.adapters
        # The next sync waits out the restart and runs on the new ranks.
        await asyncio.wait_for(coord.sync_to_samplers("s:train:0", 4, "v2"), timeout=5)
        assert coord.trainers.restarts == 1 and coord.trainers.ranks == spawner.generations[0]
        assert replica.adapters == {"v2"}

    asyncio.run(main())


def test_stopping_the_workers_stops_the_current_ranks_and_no_restart_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[object] = []
    monkeypatch.setattr(trainer_group, "kill_actor", killed.append)

    async def main() -> None:
        log: list[str] = []
        first = [MortalTrainer(log, "gen0-rank0"), MortalTrainer(log, "gen0-rank1", 1)]
        spawner = FakeSpawner(log)
        coord = Coordinator("m", 100, 64, LAYOUT, first, [], trainer_factory=spawner)  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        first[0].dead = True
        with pytest.raises(WorkerError, match="died during forward_backward"):
            await coord.forward_backward("s:train:0", 1, _fb(1), False)
        await coord.trainers.ready()
        assert killed == first  # the restart stopped the old ranks, survivor included
        killed.clear()

        await coord.stop_workers()
        assert killed == spawner.generations[0]  # the ranks of now, not those first started
        spawner.generations[0][1].dead = True
        with pytest.raises(WorkerError, match="stopped"):
            await asyncio.wait_for(coord.forward_backward("s:train:0", 2, _fb(1), False), 5)
        assert len(spawner.generations) == 1  # no restart after the stop

    asyncio.run(main())
