"""Coordinator logic with in-process fake workers: seq_id ordering, rank fan-out, bad-input
handling, refused requests, and the weight sync's place in the order.

The fakes stand in for Ray actor handles only to test ordering quickly; the real trainer and
sampler are exercised in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

import pytest

from tinsmith.actors.coordinator import Coordinator
from tinsmith.errors import UserInputError
from tinsmith.types import (
    AdamParams,
    Datum,
    ForwardBackwardInput,
    LoraConfig,
    ModelInput,
    TensorData,
)
from tinsmith.types.internal import AdapterSource, BatchLayout, DatumResult, RankResult, RankWork

LAYOUT = BatchLayout(micro_batch_tokens=8, max_padding_fraction=1.0)

if TYPE_CHECKING:
    from tests.unit.test_sampler_pool import FakeReplica


class _Method:
    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn

    def remote(self, *args: object) -> asyncio.Task[object]:
        """Submitted at once, like a Ray call; the task stands in for the object reference (it
        can be awaited, and handed on, any number of times)."""

        async def run() -> object:
            await asyncio.sleep(0)
            return self.fn(*args)

        return asyncio.ensure_future(run())

    def options(self, num_returns: int = 1) -> _Method:
        """``num_returns=2``: the call's result is a pair, handed back as two awaitables."""
        fn = self.fn

        class _Pair:
            def remote(self, *args: object) -> tuple[Coroutine[object, object, object], object]:
                first, second = fn(*args)  # type: ignore[misc]

                async def ack() -> object:
                    await asyncio.sleep(0)
                    return first

                return ack(), second

        return _Pair()  # type: ignore[return-value]


class FakeTrainer:
    def __init__(self, log: list[str], rank: int = 0) -> None:
        self.log = log
        self.rank = rank

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(getattr(self, "_" + name))

    def _create_adapter(self, spec: object) -> int:
        return 1

    def _forward_backward(self, work: RankWork) -> RankResult:
        self.log.append(f"fb:{len(work.micro_batches)}")
        datums = [
            DatumResult(
                index=d.index, logprobs=[-1.0] * d.length, elementwise_loss=[1.0] * d.length
            )
            for batch in work.micro_batches
            for d in batch.datums
        ]
        return RankResult(
            datums=datums, loss_sum=float(sum(len(d.logprobs) for d in datums)), tokens=0
        )

    def _optim_step(self, work: object) -> dict[str, float]:
        self.log.append("step")
        return {"grad_norm:mean": 1.0}

    def _unload_adapter(self, adapter_id: str) -> None:
        self.log.append("unload")

    def _export_adapter(
        self, adapter_id: str, directory: str | None
    ) -> tuple[bool, AdapterSource] | None:
        self.log.append("export")
        return (True, AdapterSource(path=f"/shm/{adapter_id}")) if self.rank == 0 else None

    def _snapshot(self, adapter_id: str) -> tuple[bool, str] | None:
        self.log.append("snapshot")
        return True, f"snapshot-of-{adapter_id}-after-{self.log.count('step')}-steps"


def _fb(n: int, loss: str = "cross_entropy") -> ForwardBackwardInput:
    datums = [
        Datum(
            model_input=ModelInput.from_ints([1] * (i + 2)),
            loss_fn_inputs={"target_tokens": TensorData(data=[1] * (i + 2), dtype="int64")},
        )
        for i in range(n)
    ]
    return ForwardBackwardInput(data=datums, loss_fn=loss)


def test_requests_run_in_seq_order_and_results_keep_datum_order() -> None:
    async def main() -> None:
        log: list[str] = []
        trainers = [FakeTrainer(log), FakeTrainer(log, rank=1)]
        coord = Coordinator("m", 100, 64, LAYOUT, trainers, [])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        # Sent out of order: optim_step (3) first, then the second chunk (2), then the first (1).
        step = asyncio.ensure_future(coord.optim_step("s:train:0", 3, AdamParams()))
        second = asyncio.ensure_future(coord.forward_backward("s:train:0", 2, _fb(1), False))
        first = asyncio.ensure_future(coord.forward_backward("s:train:0", 1, _fb(5), False))
        out_first = await first
        await second
        await step
        assert log[-4:] == [
            "step",
            "step",
            "snapshot",
            "snapshot",
        ]  # every rank snapshots after the step
        assert [len(o["logprobs"].data) for o in out_first.loss_fn_outputs] == [2, 3, 4, 5, 6]
        assert out_first.metrics["loss:sum"] == 20.0
        fb_calls = [e for e in log if e.startswith("fb:")]
        # every rank gets the same number of micro-batches per request
        assert fb_calls[0] == fb_calls[1]

    asyncio.run(main())


def test_bad_request_fails_but_frees_its_seq_id() -> None:
    async def main() -> None:
        coord = Coordinator("m", 100, 64, LAYOUT, [FakeTrainer([])], [])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        with pytest.raises(UserInputError, match="stable_reinforce"):
            await coord.forward_backward("s:train:0", 1, _fb(1, loss="stable_reinforce"), False)
        out = await asyncio.wait_for(
            coord.forward_backward("s:train:0", 2, _fb(1), False), timeout=5
        )
        assert out.metrics["loss:sum"] == 2.0
        with pytest.raises(UserInputError, match="already used"):
            await coord.forward_backward("s:train:0", 2, _fb(1), False)

    asyncio.run(main())


def test_a_seq_id_replayed_while_the_first_waits_is_refused() -> None:
    async def main() -> None:
        log: list[str] = []
        coord = Coordinator("m", 100, 64, LAYOUT, [FakeTrainer(log)], [])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        waiting = asyncio.ensure_future(coord.forward_backward("s:train:0", 2, _fb(1), False))
        await asyncio.sleep(0.01)  # seq 2 is claimed and waits for seq 1
        with pytest.raises(UserInputError, match="already used"):
            await coord.forward_backward("s:train:0", 2, _fb(1), False)
        await coord.forward_backward("s:train:0", 1, _fb(1), False)
        await waiting
        assert len([e for e in log if e.startswith("fb:")]) == 2

    asyncio.run(main())


def test_a_refused_request_consumes_its_seq_id_in_order_then_fails() -> None:
    async def main() -> None:
        log: list[str] = []
        coord = Coordinator("m", 100, 64, LAYOUT, [FakeTrainer(log)], [])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        refused = asyncio.ensure_future(coord.refuse("s:train:0", 2, "bad checkpoint name"))
        await asyncio.sleep(0.01)
        assert not refused.done()  # seq 2 waits for seq 1 like any other request
        await coord.forward_backward("s:train:0", 1, _fb(1), False)
        with pytest.raises(UserInputError, match="bad checkpoint name"):
            await asyncio.wait_for(refused, timeout=5)
        await asyncio.wait_for(coord.forward_backward("s:train:0", 3, _fb(1), False), timeout=5)
        with pytest.raises(UserInputError, match="already used"):
            await coord.refuse("s:train:0", 2, "again")

    asyncio.run(main())


def _gated_replica(log: list[str]) -> tuple[FakeReplica, asyncio.Event]:
    """A sampler replica whose loads wait for the returned event."""
    from tests.unit.test_sampler_pool import FakeReplica

    release = asyncio.Event()

    class Gated(FakeReplica):
        async def _load_adapter(self, key: str, source: AdapterSource) -> None:
            log.append(f"load:{key}")
            # rank 0's second return value, handed on unfetched (Ray resolves it in the replica)
            assert isinstance(source, AdapterSource), source
            exported = source
            await release.wait()
            await super()._load_adapter(key, exported)

    return Gated(0), release


def test_the_weight_sync_exports_in_seq_order_and_passes_the_turn_before_the_samplers_load() -> (
    None
):
    async def main() -> None:
        log: list[str] = []
        replica, release = _gated_replica(log)
        trainers = [FakeTrainer(log), FakeTrainer(log, rank=1)]
        coord = Coordinator("m", 100, 64, LAYOUT, trainers, [replica])  # type: ignore[arg-type]
        await coord.create_model("s:train:0", LoraConfig(rank=4))
        sync = asyncio.ensure_future(coord.sync_to_samplers("s:train:0", 2, "v1"))
        await asyncio.sleep(0.01)
        assert "export" not in log  # seq 2 waits for seq 1
        await coord.forward_backward("s:train:0", 1, _fb(1), False)
        # The client's next request runs while the sampler is still loading the export.
        await asyncio.wait_for(coord.forward_backward("s:train:0", 3, _fb(1), False), timeout=5)
        assert not sync.done() and "load:v1" in log
        release.set()
        await asyncio.wait_for(sync, timeout=5)
        fb_at = [i for i, e in enumerate(log) if e.startswith("fb:")]
        exports = [i for i, e in enumerate(log) if e == "export"]
        # every rank exported, after seq 1's forward_backward and before seq 3's
        assert len(exports) == 2 and fb_at[1] < exports[0] and exports[-1] < fb_at[2], log
        assert replica.adapters == {"v1"} and coord.pool.knows("v1")

    asyncio.run(main())
