"""The coordinator actor: one per base model, between the API server and the workers.

It orders each training client's requests by ``seq_id``, packs datums into micro-batches under
the token budget, spreads them over the trainer ranks, and after ``save_weights_for_sampler``
makes every sampler replica serve the new adapter before the future resolves, so a sampling
client never sees stale weights.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from tinsmith.actors.batching import pack_micro_batches, spread_over_ranks, to_token_datums
from tinsmith.actors.loss_specs import validate_loss_config
from tinsmith.actors.sampler_pool import ReplicaHandle as _Handle
from tinsmith.actors.sampler_pool import SamplerPool
from tinsmith.cluster.checkpoints import safe_name
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.storage.transfer import ArchiveRef
from tinsmith.types.data import TensorData
from tinsmith.types.internal import (
    AdapterSource,
    AdapterSpec,
    CheckpointMeta,
    DatumResult,
    LoadCheckpointWork,
    ModelStatus,
    OptimStepWork,
    RankResult,
    RankWork,
    SampleWork,
    SaveCheckpointWork,
    SavedCheckpoint,
    WorkerStatus,
)
from tinsmith.types.sampling import SampleResponse
from tinsmith.types.training import AdamParams, ForwardBackwardInput, ForwardBackwardOutput, LoraConfig

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


class SamplerSpawner(Protocol):
    """Creates sampler replica ``index`` anew (``tinsmith.cluster.placement.SamplerFactory``)."""

    shm_dir: str

    def spawn(self, index: int) -> _Handle: ...


class _Sequencer:
    """Releases a model's requests strictly in seq_id order (1, 2, 3, ...), waiting for gaps."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.cond = asyncio.Condition()
        self.has_gradients = False
        self.claimed: set[int] = set()

    async def wait_turn(self, seq_id: int | None) -> None:
        """Wait for ``seq_id``'s turn. Each seq_id is taken once: a second request with it (a replay
        under another idempotency key), even one arriving while the first still waits or runs, is
        refused, so nothing is applied twice."""
        if seq_id is None:
            return
        async with self.cond:
            if seq_id < self.next_seq or seq_id in self.claimed:
                raise UserInputError(f"seq_id {seq_id} was already used (next expected {self.next_seq})")
            self.claimed.add(seq_id)
            await self.cond.wait_for(lambda: self.next_seq == seq_id)

    async def done(self, seq_id: int | None) -> None:
        if seq_id is None:
            return
        async with self.cond:
            self.next_seq = seq_id + 1
            self.claimed.discard(seq_id)
            self.cond.notify_all()


class Coordinator:
    """Async Ray actor. Its public methods take and return ``tinsmith.types`` models."""

    def __init__(
        self,
        base_model: str,
        vocab_size: int,
        max_length: int,
        micro_batch_tokens: int,
        max_padding_fraction: float,
        trainers: list[_Handle],
        samplers: list[_Handle],
        sampler_factory: SamplerSpawner | None = None,
    ) -> None:
        self.base_model = base_model
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.micro_batch_tokens = micro_batch_tokens
        self.max_padding_fraction = max_padding_fraction
        self.trainers = trainers
        self.samplers = samplers
        self.adapters: dict[str, LoraConfig] = {}
        self.sequencers: dict[str, _Sequencer] = {}
        self.pool = SamplerPool(samplers, sampler_factory.spawn if sampler_factory is not None else None)
        self.shm_dir = sampler_factory.shm_dir if sampler_factory is not None else None
        self._trainer_node: str | None = None

    # ----- training -----------------------------------------------------------------------
    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        if model_id in self.adapters:
            raise UserInputError(f"model_id {model_id!r} already exists")
        spec = AdapterSpec(adapter_id=_adapter_name(model_id), lora=lora)
        await asyncio.gather(*[t.create_adapter.remote(spec) for t in self.trainers])
        self.adapters[model_id] = lora
        self.sequencers[model_id] = _Sequencer()

    async def unload_model(self, model_id: str) -> None:
        """Free a training client's adapter and optimizer state on every rank."""
        self._model(model_id)
        del self.adapters[model_id], self.sequencers[model_id]
        await asyncio.gather(*[t.unload_adapter.remote(_adapter_name(model_id)) for t in self.trainers])

    async def create_from_checkpoint(
        self, model_id: str, lora: LoraConfig, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """A new training client whose adapter (and optimizer) come from a checkpoint; its step."""
        await self.create_model(model_id, lora)
        try:
            return await self._load(model_id, archive, with_optimizer)
        except BaseException:
            await self.unload_model(model_id)
            raise

    async def load_checkpoint(
        self, model_id: str, seq_id: int | None, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        """The older ``load_state`` form: replace an existing client's adapter, in seq_id order."""
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            seq.has_gradients = False
            return await self._load(model_id, archive, with_optimizer)
        finally:
            await seq.done(seq_id)

    async def _load(self, model_id: str, archive: ArchiveRef, with_optimizer: bool) -> int:
        work = LoadCheckpointWork(adapter_id=_adapter_name(model_id), archive=archive, with_optimizer=with_optimizer)
        steps: list[int] = list(await asyncio.gather(*[t.load_checkpoint.remote(work) for t in self.trainers]))  # type: ignore[arg-type]
        return steps[0]

    async def save_checkpoint(
        self, model_id: str, seq_id: int | None, archive: ArchiveRef, meta: CheckpointMeta, with_optimizer: bool
    ) -> SavedCheckpoint:
        """Write the adapter (and optimizer state) as an archive in storage, in seq_id order."""
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            work = SaveCheckpointWork(
                adapter_id=_adapter_name(model_id), archive=archive, meta=meta, with_optimizer=with_optimizer
            )
            results = await asyncio.gather(*[t.save_checkpoint.remote(work) for t in self.trainers])
        finally:
            await seq.done(seq_id)
        saved = results[0]
        assert isinstance(saved, SavedCheckpoint)
        return saved

    def _model(self, model_id: str) -> _Sequencer:
        seq = self.sequencers.get(model_id)
        if seq is None:
            raise NotFoundError(f"model_id {model_id!r} is not a training model of {self.base_model}")
        return seq

    async def forward_backward(
        self, model_id: str, seq_id: int | None, fb: ForwardBackwardInput, forward_only: bool
    ) -> ForwardBackwardOutput:
        seq = self._model(model_id)
        # Validate before waiting for the turn, but keep the slot: a bad request still uses its seq_id.
        try:
            datums = to_token_datums(fb.data, fb.loss_fn, self.vocab_size, self.max_length)
            loss_config = validate_loss_config(fb.loss_fn, fb.loss_fn_config)
        except UserInputError:
            await seq.wait_turn(seq_id)
            await seq.done(seq_id)
            raise
        await seq.wait_turn(seq_id)
        try:
            per_rank = spread_over_ranks(
                pack_micro_batches(datums, self.micro_batch_tokens, self.max_padding_fraction), len(self.trainers)
            )
            works = [
                RankWork(
                    adapter_id=_adapter_name(model_id),
                    loss_fn=fb.loss_fn,
                    loss_fn_config=dict(loss_config),
                    forward_only=forward_only,
                    micro_batches=batches,
                    grad_scale=float(len(self.trainers)),
                )
                for batches in per_rank
            ]
            if not forward_only:
                seq.has_gradients = True
            results: list[RankResult] = list(
                await asyncio.gather(*[t.forward_backward.remote(w) for t, w in zip(self.trainers, works, strict=True)])  # type: ignore[arg-type]
            )
        finally:
            await seq.done(seq_id)
        by_index: dict[int, DatumResult] = {d.index: d for r in results for d in r.datums}
        outputs = [
            {
                "logprobs": TensorData(data=by_index[i].logprobs, dtype="float32", shape=[len(by_index[i].logprobs)]),
                "elementwise_loss": TensorData(
                    data=by_index[i].elementwise_loss,
                    dtype="float32",
                    shape=[len(by_index[i].elementwise_loss)],
                ),
            }
            for i in range(len(datums))
        ]
        metrics = {
            "loss:sum": sum(r.loss_sum for r in results),
            "num_tokens:sum": float(sum(r.tokens for r in results)),
            "trainer_seconds:max": max(r.seconds for r in results),
            "padding_tokens:sum": float(
                sum(b.padded_tokens for batches in per_rank for b in batches) - sum(d.length for d in datums)
            ),
        }
        return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)

    async def optim_step(self, model_id: str, seq_id: int | None, adam: AdamParams) -> dict[str, float]:
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            if not seq.has_gradients:
                raise UserInputError("optim_step without gradients: call forward_backward first")
            seq.has_gradients = False
            work = OptimStepWork(adapter_id=_adapter_name(model_id), adam=adam)
            metrics: list[dict[str, float]] = list(
                await asyncio.gather(*[t.optim_step.remote(work) for t in self.trainers])  # type: ignore[arg-type]
            )
        finally:
            await seq.done(seq_id)
        return metrics[0]

    async def sync_to_samplers(self, model_id: str, seq_id: int | None, key: str) -> None:
        """The ephemeral weight sync: rank 0 exports the adapter, every sampler replica loads it,
        and only then does the call return.

        When every live replica shares rank 0's node, rank 0 writes the peft files once into the
        memory-backed ``shm_dir`` and the replicas read them there (the fastest path); otherwise
        the files travel as bytes through Ray's object store. The export is queued on rank 0 in
        seq_id order (an actor runs its calls in submission order), so the client's next request
        may start while the samplers load.
        """
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            directory = await self._same_node_dir(key)
            exported = cast(
                "ObjectRef[AdapterSource]",
                self.trainers[0].export_adapter.remote(_adapter_name(model_id), directory),
            )
        finally:
            await seq.done(seq_id)
        if len(self.pool):
            await self.pool.load(key, exported)

    async def _same_node_dir(self, key: str) -> str | None:
        """A shm directory for ``key`` if rank 0 and every live sampler replica share a node."""
        if self.shm_dir is None or not len(self.pool):
            return None
        if self._trainer_node is None:
            self._trainer_node = str(await self.trainers[0].node_id.remote())
        live = [r for r, ok in zip(self.pool.replicas, self.pool.alive, strict=True) if ok]
        try:
            nodes = await asyncio.gather(*[r.node_id.remote() for r in live])
        except Exception:
            return None  # a replica is going away: use the object store this time
        if any(str(n) != self._trainer_node for n in nodes):
            return None
        return str(Path(self.shm_dir) / "adapters" / safe_name(key))

    async def skip_seq(self, model_id: str, seq_id: int | None) -> None:
        """Consume a seq_id for a request handled without the workers (keeps ordering intact)."""
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        await seq.done(seq_id)

    async def adapter_state(self, model_id: str, rank: int) -> dict[str, list[float]]:
        self._model(model_id)
        return await self.trainers[rank].adapter_state.remote(_adapter_name(model_id))  # type: ignore[return-value]

    # ----- sampling -----------------------------------------------------------------------
    async def sample(self, work: SampleWork, source: AdapterSource | None) -> SampleResponse:
        if not len(self.pool):
            raise UserInputError(f"base model {self.base_model!r} has no sampler replicas (config)")
        if work.adapter_key is not None and not self.pool.knows(work.adapter_key):
            if source is None:
                raise NotFoundError(f"sampler weights {work.adapter_key!r} are not available")
            await self.pool.load(work.adapter_key, source)
        return await self.pool.sample(work)

    async def ping(self) -> str:
        return self.base_model

    async def status(self) -> ModelStatus:
        """Every live worker's status, and per sampler replica: alive, requests served."""
        handles = [*self.trainers, *(s for s, ok in zip(self.samplers, self.pool.alive, strict=True) if ok)]
        found = await asyncio.gather(*[w.status.remote() for w in handles], return_exceptions=True)
        workers = [w for w in found if isinstance(w, WorkerStatus)]
        return ModelStatus(
            base_model=self.base_model,
            training_models=len(self.adapters),
            workers=workers,
            sampler_alive=list(self.pool.alive),
            sampler_requests=list(self.pool.served),
            sampler_restarts=list(self.pool.restarts),
        )


def _adapter_name(model_id: str) -> str:
    """peft adapter names may not contain '.', and ':' is awkward in module paths."""
    return "a_" + "".join(c if c.isalnum() else "_" for c in model_id)
