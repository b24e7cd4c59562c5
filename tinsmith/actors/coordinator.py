"""The coordinator actor: one per base model, between the API server and the workers.

It orders each training client's requests by ``seq_id``, packs datums into micro-batches under
the token budget, spreads them over the trainer ranks, and after ``save_weights_for_sampler``
makes every sampler replica serve the new adapter before the future resolves, so a sampling
client never sees stale weights.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Protocol

from tinsmith.actors.batching import plan_rank_work, to_token_datums
from tinsmith.actors.loss_specs import validate_loss_config
from tinsmith.actors.sampler_pool import ReplicaHandle as _Handle
from tinsmith.actors.sampler_pool import SamplerPool
from tinsmith.actors.trainer_group import TrainerGroup, TrainerSpawner
from tinsmith.actors.training_clients import TrainingClient
from tinsmith.errors import NotFoundError, UserInputError, WorkerError
from tinsmith.types.archives import ArchiveRef, safe_name
from tinsmith.types.data import TensorData
from tinsmith.types.internal import (
    AdapterSource,
    AdapterSpec,
    BatchLayout,
    CheckpointMeta,
    DatumResult,
    LoadCheckpointWork,
    MicroBatch,
    ModelStatus,
    OptimStepWork,
    RankResult,
    RankWork,
    SampleWork,
    SaveCheckpointWork,
    SavedCheckpoint,
    TokenDatum,
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
    from tinsmith.types.coordinator import CoordinatorAPI

log = logging.getLogger(__name__)


class SamplerSpawner(Protocol):
    """Creates sampler replica ``index`` anew (``tinsmith.cluster.placement.SamplerFactory``)."""

    shm_dir: str

    def spawn(self, index: int) -> _Handle: ...


class Coordinator:
    """Async Ray actor implementing ``CoordinatorAPI``: its methods take and return
    ``tinsmith.types`` models."""

    def __init__(
        self,
        base_model: str,
        vocab_size: int,
        max_length: int,
        layout: BatchLayout,
        trainers: list[_Handle],
        samplers: list[_Handle],
        sampler_factory: SamplerSpawner | None = None,
        trainer_factory: TrainerSpawner | None = None,
        image_token_id: int | None = None,
    ) -> None:
        self.base_model = base_model
        self.vocab_size = vocab_size
        self.image_token_id = image_token_id  # None: a model without images
        self.max_length = max_length
        self.layout = layout
        self.trainers = TrainerGroup(base_model, trainers, trainer_factory, self._specs)
        self.trainers.on_restart = self._on_trainer_restart
        self.clients: dict[str, TrainingClient] = {}
        self.pool = SamplerPool(
            samplers, sampler_factory.spawn if sampler_factory is not None else None
        )
        self.shm_dir = sampler_factory.shm_dir if sampler_factory is not None else None
        self._trainer_node: str | None = None

    # ----- training clients -----------------------------------------------------------------
    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        """A new training client: its adapter and optimizer on every trainer rank."""
        if model_id in self.clients:
            raise UserInputError(f"model_id {model_id!r} already exists")
        client = TrainingClient(adapter_id=_adapter_name(model_id), lora=lora)
        await self.trainers.create_adapter(AdapterSpec(adapter_id=client.adapter_id, lora=lora))
        self.clients[model_id] = client

    async def unload_model(self, model_id: str) -> None:
        """Free a training client's adapter and optimizer state on every rank (a lost one's too)."""
        client = self._known(model_id)
        del self.clients[model_id]
        self.trainers.forget(model_id)
        await self.trainers.unload_adapter(client.adapter_id)

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
        async with self._turn(model_id, seq_id) as client:
            client.gradients.pending = False
            return await self._load(model_id, archive, with_optimizer)

    async def _load(self, model_id: str, archive: ArchiveRef, with_optimizer: bool) -> int:
        adapter_id = self.clients[model_id].adapter_id
        work = LoadCheckpointWork(
            adapter_id=adapter_id, archive=archive, with_optimizer=with_optimizer
        )
        step = await self.trainers.load_checkpoint(work)
        await self.trainers.snapshot(model_id, adapter_id)
        return step

    async def save_checkpoint(
        self,
        model_id: str,
        seq_id: int | None,
        archive: ArchiveRef,
        meta: CheckpointMeta,
        with_optimizer: bool,
    ) -> SavedCheckpoint:
        """Write the adapter (and optimizer state) as an archive in storage, in seq_id order."""
        async with self._turn(model_id, seq_id) as client:
            work = SaveCheckpointWork(
                adapter_id=client.adapter_id,
                archive=archive,
                meta=meta,
                with_optimizer=with_optimizer,
            )
            return await self.trainers.save_checkpoint(work)

    def _known(self, model_id: str) -> TrainingClient:
        client = self.clients.get(model_id)
        if client is None:
            raise NotFoundError(
                f"model_id {model_id!r} is not a training model of {self.base_model}"
            )
        return client

    def _model(self, model_id: str) -> TrainingClient:
        """A training client that can take requests (not one lost in a trainer restart)."""
        client = self._known(model_id)
        lost = self.trainers.lost.get(model_id)
        if lost is not None:
            raise WorkerError(
                f"training client {model_id} did not survive a trainer restart: {lost}; create "
                "a training client from its last saved state (create_training_client_from_state)"
            )
        return client

    @asynccontextmanager
    async def _turn(self, model_id: str, seq_id: int | None) -> AsyncIterator[TrainingClient]:
        """Hold ``seq_id``'s turn of a client that can take requests. The turn passes on however
        the request ends: a failed request still consumes its seq_id."""
        client = self._model(model_id)
        await client.order.wait_turn(seq_id)
        try:
            yield client
        finally:
            await client.order.done(seq_id)

    async def refuse(self, model_id: str, seq_id: int | None, message: str) -> NoReturn:
        """Fail a request the server answers itself, after consuming its seq_id in order (so the
        client's later requests are not left waiting for it)."""
        async with self._turn(model_id, seq_id):
            pass
        raise UserInputError(message)

    async def forward_backward(
        self, model_id: str, seq_id: int | None, fb: ForwardBackwardInput, forward_only: bool
    ) -> ForwardBackwardOutput:
        """Run (and unless ``forward_only``, accumulate gradients of) one batch, in seq_id order.
        The datums are checked before the turn; a bad request still consumes its seq_id."""
        try:
            datums = to_token_datums(
                fb.data, fb.loss_fn, self.vocab_size, self.max_length, self.image_token_id
            )
            loss_config = validate_loss_config(fb.loss_fn, fb.loss_fn_config)
        except UserInputError:
            async with self._turn(model_id, seq_id):
                pass
            raise
        async with self._turn(model_id, seq_id) as client:
            ranks = len(self.trainers.ranks)
            per_rank = plan_rank_work(datums, ranks, self.layout)
            works = [
                RankWork(
                    adapter_id=client.adapter_id,
                    loss_fn=fb.loss_fn,
                    loss_fn_config=dict(loss_config),
                    forward_only=forward_only,
                    micro_batches=batches,
                    grad_scale=float(ranks),
                )
                for batches in per_rank
            ]
            if not forward_only:
                await self._gradients_intact(client)
                client.gradients.pending = True
            results = await self.trainers.forward_backward(works)
            if not forward_only:
                client.gradients.completed += 1
        return _fb_output(datums, per_rank, results)

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        """One AdamW step over the client's accumulated gradients, then its snapshot."""
        async with self._turn(model_id, seq_id) as client:
            await self._gradients_intact(client)
            if not client.gradients.pending:
                raise UserInputError("optim_step without gradients: call forward_backward first")
            work = OptimStepWork(adapter_id=client.adapter_id, adam=adam)
            metrics = await self.trainers.optim_step(work)
            await self.trainers.snapshot(model_id, client.adapter_id)
            client.gradients.stepped()
        return metrics

    async def _gradients_intact(self, client: TrainingClient) -> None:
        """Fail the client's next forward_backward or optim_step, once, if a trainer restart
        dropped gradients it had accumulated (after waiting out a restart under way)."""
        await self.trainers.ready()
        client.gradients.raise_if_lost()

    # ----- weight sync and sampling ---------------------------------------------------------
    async def sync_to_samplers(self, model_id: str, seq_id: int | None, key: str) -> None:
        """The ephemeral weight sync: rank 0 exports the adapter, every sampler replica loads it,
        and only then does the call return.

        When every live replica shares rank 0's node, rank 0 writes the peft files once into the
        memory-backed ``shm_dir`` and the replicas read them there (the fastest path); otherwise
        the files travel as bytes through Ray's object store. The export is queued on the ranks
        in seq_id order (an actor runs its calls in submission order), and the turn passes on
        then, so the client's next request may start while the export finishes and the samplers
        load. A rank that dies before the export is done fails this request (retryably).
        """
        async with self._turn(model_id, seq_id) as client:
            directory = await self._same_node_dir(key)
            export = await self.trainers.export_adapter(client.adapter_id, directory)
        exported = await export
        if len(self.pool):
            await self.pool.load(key, exported)

    async def _same_node_dir(self, key: str) -> str | None:
        """A shm directory for ``key`` if rank 0 and every live sampler replica share a node."""
        if self.shm_dir is None or not len(self.pool):
            return None
        if self._trainer_node is None:
            self._trainer_node = await self.trainers.node_id()
        try:
            nodes = await self.pool.live_nodes()
        except Exception:
            return None  # a replica is going away: use the object store this time
        if any(str(n) != self._trainer_node for n in nodes):
            return None
        return str(Path(self.shm_dir) / "adapters" / safe_name(key))

    async def sample(self, work: SampleWork, source: AdapterSource | None) -> SampleResponse:
        """Sample on the least-loaded live replica (loading the adapter from ``source`` first)."""
        if not len(self.pool):
            raise UserInputError(f"base model {self.base_model!r} has no sampler replicas (config)")
        if work.adapter_key is not None and not self.pool.knows(work.adapter_key):
            if source is None:
                raise NotFoundError(f"sampler weights {work.adapter_key!r} are not available")
            await self.pool.load(work.adapter_key, source)
        return await self.pool.sample(work)

    # ----- lifecycle ------------------------------------------------------------------------
    async def ping(self) -> str:
        """Liveness (start-up waits on it); the first call also starts watching the trainers."""
        self.trainers.watch()
        return self.base_model

    async def stop_workers(self) -> None:
        """Stop the current trainer ranks and sampler replicas, replacements included (only this
        actor knows those); ``ModelActors.shutdown`` calls it before killing the coordinator."""
        await asyncio.gather(self.trainers.close(), self.pool.close())

    def _specs(self) -> dict[str, AdapterSpec]:
        return {
            m: AdapterSpec(adapter_id=c.adapter_id, lora=c.lora) for m, c in self.clients.items()
        }

    def _on_trainer_restart(self) -> None:
        """As a trainer restart begins: gradients accumulated since a client's last step are gone,
        and rank 0 may come back on another node."""
        self._trainer_node = None
        for client in self.clients.values():
            client.gradients.restarted()

    async def status(self) -> ModelStatus:
        """Every live worker's status, and per sampler replica: alive, requests served."""
        handles = [*self.trainers.ranks, *self.pool.live_replicas()]
        found = await asyncio.gather(*[w.status.remote() for w in handles], return_exceptions=True)
        workers = [w for w in found if isinstance(w, WorkerStatus)]
        return ModelStatus(
            base_model=self.base_model,
            training_models=len(self.clients),
            workers=workers,
            sampler_alive=list(self.pool.alive),
            sampler_requests=list(self.pool.served),
            sampler_restarts=list(self.pool.restarts),
            trainer_restarts=self.trainers.restarts,
        )


def _conforms(coordinator: Coordinator) -> CoordinatorAPI:
    """Never called: mypy checks here that the actor implements the server's interface."""
    return coordinator


def _fb_output(
    datums: list[TokenDatum], per_rank: list[list[MicroBatch]], results: list[RankResult]
) -> ForwardBackwardOutput:
    """Every rank's per-datum results in request order, and the request's metrics."""
    by_index: dict[int, DatumResult] = {d.index: d for r in results for d in r.datums}

    def tensor(values: list[float]) -> TensorData:
        return TensorData(data=values, dtype="float32", shape=[len(values)])

    outputs = [
        {
            "logprobs": tensor(by_index[i].logprobs),
            "elementwise_loss": tensor(by_index[i].elementwise_loss),
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


def _adapter_name(model_id: str) -> str:
    """peft adapter names may not contain '.', and ':' is awkward in module paths."""
    return "a_" + "".join(c if c.isalnum() else "_" for c in model_id)
