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

from tinsmith.actors.batching import plan_rank_work, to_token_datums
from tinsmith.actors.loss_specs import validate_loss_config
from tinsmith.actors.sampler_pool import ReplicaHandle as _Handle
from tinsmith.actors.sampler_pool import SamplerPool
from tinsmith.actors.trainer_group import TrainerGroup, TrainerSpawner
from tinsmith.errors import NotFoundError, UserInputError, WorkerError
from tinsmith.types.archives import ArchiveRef, safe_name
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
from tinsmith.types.training import (
    AdamParams,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
)

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
        self.completed_backwards = (
            0  # forward_backward calls that finished since the last optim_step
        )
        self.gradients_lost = False  # a trainer restart dropped some of them
        self.claimed: set[int] = set()

    async def wait_turn(self, seq_id: int | None) -> None:
        """Wait for ``seq_id``'s turn. Each seq_id is taken once: a second request with it (a replay
        under another idempotency key), even one arriving while the first still waits or runs, is
        refused, so nothing is applied twice."""
        if seq_id is None:
            return
        async with self.cond:
            if seq_id < self.next_seq or seq_id in self.claimed:
                raise UserInputError(
                    f"seq_id {seq_id} was already used (next expected {self.next_seq})"
                )
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
        trainer_factory: TrainerSpawner | None = None,
    ) -> None:
        self.base_model = base_model
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.micro_batch_tokens = micro_batch_tokens
        self.max_padding_fraction = max_padding_fraction
        self.trainers = TrainerGroup(base_model, trainers, trainer_factory, self._specs)
        self.trainers.on_restart = self._on_trainer_restart
        self.samplers = samplers
        self.adapters: dict[str, LoraConfig] = {}
        self.sequencers: dict[str, _Sequencer] = {}
        self.pool = SamplerPool(
            samplers, sampler_factory.spawn if sampler_factory is not None else None
        )
        self.shm_dir = sampler_factory.shm_dir if sampler_factory is not None else None
        self._trainer_node: str | None = None

    # ----- training -----------------------------------------------------------------------
    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        if model_id in self.adapters:
            raise UserInputError(f"model_id {model_id!r} already exists")
        spec = AdapterSpec(adapter_id=_adapter_name(model_id), lora=lora)
        await self.trainers.call("create_model", lambda _, t: t.create_adapter.remote(spec))
        self.adapters[model_id] = lora
        self.sequencers[model_id] = _Sequencer()

    async def unload_model(self, model_id: str) -> None:
        """Free a training client's adapter and optimizer state on every rank (a lost one's too)."""
        self._known(model_id)
        del self.adapters[model_id], self.sequencers[model_id]
        self.trainers.forget(model_id)
        await self.trainers.call(
            "unload_model", lambda _, t: t.unload_adapter.remote(_adapter_name(model_id))
        )

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
        work = LoadCheckpointWork(
            adapter_id=_adapter_name(model_id), archive=archive, with_optimizer=with_optimizer
        )
        steps = await self.trainers.call("load_state", lambda _, t: t.load_checkpoint.remote(work))
        await self.trainers.snapshot(model_id, work.adapter_id)
        return cast(int, steps[0])

    async def save_checkpoint(
        self,
        model_id: str,
        seq_id: int | None,
        archive: ArchiveRef,
        meta: CheckpointMeta,
        with_optimizer: bool,
    ) -> SavedCheckpoint:
        """Write the adapter (and optimizer state) as an archive in storage, in seq_id order."""
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            work = SaveCheckpointWork(
                adapter_id=_adapter_name(model_id),
                archive=archive,
                meta=meta,
                with_optimizer=with_optimizer,
            )
            results = await self.trainers.call(
                "save_state", lambda _, t: t.save_checkpoint.remote(work)
            )
        finally:
            await seq.done(seq_id)
        saved = results[0]
        assert isinstance(saved, SavedCheckpoint)
        return saved

    def _known(self, model_id: str) -> _Sequencer:
        seq = self.sequencers.get(model_id)
        if seq is None:
            raise NotFoundError(
                f"model_id {model_id!r} is not a training model of {self.base_model}"
            )
        return seq

    def _model(self, model_id: str) -> _Sequencer:
        """A training client that can take requests (not one lost in a trainer restart)."""
        seq = self._known(model_id)
        lost = self.trainers.lost.get(model_id)
        if lost is not None:
            raise WorkerError(
                f"training client {model_id} did not survive a trainer restart: {lost}; create a training client "
                "from its last saved state (create_training_client_from_state)"
            )
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
            per_rank = plan_rank_work(
                datums, len(self.trainers.ranks), self.micro_batch_tokens, self.max_padding_fraction
            )
            works = [
                RankWork(
                    adapter_id=_adapter_name(model_id),
                    loss_fn=fb.loss_fn,
                    loss_fn_config=dict(loss_config),
                    forward_only=forward_only,
                    micro_batches=batches,
                    grad_scale=float(len(self.trainers.ranks)),
                )
                for batches in per_rank
            ]
            if not forward_only:
                await self._report_lost_gradients(seq)
                seq.has_gradients = True
            what = "forward" if forward_only else "forward_backward"
            results = cast(
                list[RankResult],
                await self.trainers.call(what, lambda i, t: t.forward_backward.remote(works[i])),
            )
            if not forward_only:
                seq.completed_backwards += 1
        finally:
            await seq.done(seq_id)
        by_index: dict[int, DatumResult] = {d.index: d for r in results for d in r.datums}
        outputs = [
            {
                "logprobs": TensorData(
                    data=by_index[i].logprobs, dtype="float32", shape=[len(by_index[i].logprobs)]
                ),
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
                sum(b.padded_tokens for batches in per_rank for b in batches)
                - sum(d.length for d in datums)
            ),
        }
        return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        seq = self._model(model_id)
        await seq.wait_turn(seq_id)
        try:
            await self._report_lost_gradients(seq)
            if not seq.has_gradients:
                raise UserInputError("optim_step without gradients: call forward_backward first")
            work = OptimStepWork(adapter_id=_adapter_name(model_id), adam=adam)
            metrics = await self.trainers.call("optim_step", lambda _, t: t.optim_step.remote(work))
            await self.trainers.snapshot(model_id, work.adapter_id)
            seq.has_gradients, seq.completed_backwards = False, 0
        finally:
            await seq.done(seq_id)
        return cast(dict[str, float], metrics[0])

    async def _report_lost_gradients(self, seq: _Sequencer) -> None:
        """Fail the client's next forward_backward or optim_step, once, if a trainer restart
        dropped gradients it had accumulated: applying only the later ones would be silently wrong."""
        await self.trainers.ready()
        if seq.gradients_lost:
            seq.gradients_lost = False
            raise WorkerError(
                "the trainer ranks restarted after this client's last optimizer step and the gradients of its "
                "forward_backward calls since then were lost (the adapter is at that step): repeat those "
                "forward_backward calls, then optim_step"
            )

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
            await self.trainers.ready()
            # every rank takes part (ZeRO-3 gathers the weights); rank 0's answer is the adapter
            answers = [
                t.export_adapter.remote(_adapter_name(model_id), directory)
                for t in self.trainers.ranks
            ]
            exported = cast("ObjectRef[AdapterSource]", answers[0])
        finally:
            await seq.done(seq_id)
        if len(self.pool):
            await self.pool.load(key, exported)

    async def _same_node_dir(self, key: str) -> str | None:
        """A shm directory for ``key`` if rank 0 and every live sampler replica share a node."""
        if self.shm_dir is None or not len(self.pool):
            return None
        if self._trainer_node is None:
            (node,) = await self.trainers.call(
                "node_id", lambda _, t: t.node_id.remote(), only_rank0=True
            )
            self._trainer_node = str(node)
        try:
            nodes = await self.pool.live_nodes()
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
        """Liveness (start-up waits on it); the first call also starts watching the trainer ranks."""
        self.trainers.watch()
        return self.base_model

    def _specs(self) -> dict[str, AdapterSpec]:
        return {
            m: AdapterSpec(adapter_id=_adapter_name(m), lora=lora)
            for m, lora in self.adapters.items()
        }

    def _on_trainer_restart(self) -> None:
        """As a trainer restart begins: gradients accumulated since a client's last step are gone,
        and rank 0 may come back on another node."""
        self._trainer_node = None
        for seq in self.sequencers.values():
            seq.gradients_lost = seq.gradients_lost or seq.completed_backwards > 0
            seq.has_gradients, seq.completed_backwards = False, 0

    async def status(self) -> ModelStatus:
        """Every live worker's status, and per sampler replica: alive, requests served."""
        handles = [
            *self.trainers.ranks,
            *(s for s, ok in zip(self.samplers, self.pool.alive, strict=True) if ok),
        ]
        found = await asyncio.gather(*[w.status.remote() for w in handles], return_exceptions=True)
        workers = [w for w in found if isinstance(w, WorkerStatus)]
        return ModelStatus(
            base_model=self.base_model,
            training_models=len(self.adapters),
            workers=workers,
            sampler_alive=list(self.pool.alive),
            sampler_requests=list(self.pool.served),
            sampler_restarts=list(self.pool.restarts),
            trainer_restarts=self.trainers.restarts,
        )


def _adapter_name(model_id: str) -> str:
    """peft adapter names may not contain '.', and ':' is awkward in module paths."""
    return "a_" + "".join(c if c.isalnum() else "_" for c in model_id)
