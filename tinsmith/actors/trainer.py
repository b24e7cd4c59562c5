"""The trainer worker actor: one data-parallel rank of DeepSpeed LoRA training.

Each rank holds one copy of the base model and any number of peft LoRA adapters on it (one per
training client). Every adapter has its own DeepSpeed engine (and optimizer) over a thin view
module, so hooks and optimizer state never mix between adapters. Gradients accumulate across
``forward_backward`` calls until ``optim_step`` (DeepSpeed's unmanaged gradient accumulation),
which matches Tinker's semantics.

This module is the rank's Ray surface; the work is in ``rank_setup`` (process and base model),
``lora_adapters`` (peft adapters), ``adapter_engine`` (an adapter's engine and optimizer),
``forward_backward`` (the compute) and ``checkpoint_io`` (files, archives, snapshots).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tinsmith.actors import malloc_tuning
from tinsmith.actors.adapter_engine import AdapterEngine
from tinsmith.actors.checkpoint_io import (
    adapter_blob,
    decode_snapshot,
    encode_snapshot,
    fetch_checkpoint,
    upload_checkpoint,
    write_peft_dir,
)
from tinsmith.actors.forward_backward import run_forward_backward
from tinsmith.actors.image_inputs import ImageInputs
from tinsmith.actors.lora_adapters import LoraAdapters
from tinsmith.actors.node_info import node_info
from tinsmith.actors.rank_setup import start_rank
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.storage.transfer import StorageSite
from tinsmith.types.internal import (
    AdapterSnapshot,
    AdapterSource,
    AdapterSpec,
    LoadCheckpointWork,
    OptimStepWork,
    RankResult,
    RankWork,
    SaveCheckpointWork,
    SavedCheckpoint,
    WorkerStatus,
)
from tinsmith.types.settings import TrainerConfig

if TYPE_CHECKING:
    import torch


class TrainerWorker:
    """One trainer rank. Created by ``tinsmith.cluster.placement.TrainerGroup``."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model_dir: str,
        config: TrainerConfig,
        site: StorageSite,
    ) -> None:
        runtime = start_rank(rank, world_size, master_addr, master_port, model_dir, config)
        self.rank = rank
        self.world_size = world_size
        self.config = config
        self.site = site
        self.device = runtime.device
        self.dtype = runtime.dtype
        self.zero3 = config.zero_stage == 3
        self.lora = LoraAdapters(runtime.base, runtime.arch)
        self.engines: dict[str, AdapterEngine] = {}
        image_token = runtime.image_token_id
        self.image_inputs = ImageInputs(model_dir, image_token) if image_token is not None else None

    # ----- adapters -------------------------------------------------------------------------
    def create_adapter(self, spec: AdapterSpec) -> int:
        """Add a LoRA adapter and its engine; returns the number of trainable parameters."""
        name = spec.adapter_id
        if self.zero3 and self.lora.arch.moe and spec.lora.train_mlp:
            # peft's expert LoRA reads its weights outside the modules ZeRO-3 gathers
            raise UserInputError(
                "lora_config.train_mlp: LoRA on a MoE model's experts cannot train at ZeRO "
                "stage 3 (this model's trainer.zero_stage); set train_mlp=False or serve the "
                "model at stage 0-2"
            )
        params = self.lora.add(name, spec.lora)
        self.engines[name] = AdapterEngine.create(self.lora.view(name), params, self.config)
        return sum(p.numel() for p in params)

    def unload_adapter(self, adapter_id: str) -> None:
        """Drop an adapter, its engine and its optimizer state (idempotent)."""
        import gc

        adapter = self.engines.pop(adapter_id, None)
        if adapter is None or self.lora.peft is None:
            return
        adapter.destroy()
        del adapter
        self.lora.remove(adapter_id)
        gc.collect()

    def _engine(self, adapter_id: str) -> AdapterEngine:
        adapter = self.engines.get(adapter_id)
        if adapter is None:
            raise NotFoundError(f"adapter {adapter_id!r} is not loaded on trainer rank {self.rank}")
        return adapter

    def _activate(self, adapter_id: str) -> AdapterEngine:
        """The adapter's engine, with the adapter made peft's active (and only trainable) one."""
        adapter = self._engine(adapter_id)
        self.lora.activate(adapter_id)
        return adapter

    def _adapter_tensors(self, adapter_id: str) -> dict[str, torch.Tensor]:
        """The adapter's weights on the CPU; a gather (every rank together) under ZeRO-3."""
        self._engine(adapter_id)
        return self.lora.tensors(adapter_id, self.zero3)

    # ----- forward / backward ------------------------------------------------------------
    def forward_backward(self, work: RankWork) -> RankResult:
        """Run every micro-batch; gradients accumulate into this adapter until optim_step."""
        with malloc_tuning.working():
            adapter = self._activate(work.adapter_id)
            return run_forward_backward(
                adapter.engine, work, self.device, self.zero3, self.image_inputs
            )

    # ----- optimizer ----------------------------------------------------------------------
    def optim_step(self, work: OptimStepWork) -> dict[str, float]:
        """Apply AdamW with this call's hyper-parameters to the accumulated gradients."""
        with malloc_tuning.working():
            return self._activate(work.adapter_id).optim_step(work.adam)

    # ----- weights ------------------------------------------------------------------------
    def node_id(self) -> str:
        """The Ray node this rank runs on (the coordinator compares it with the samplers')."""
        return node_info()[0]

    def export_adapter(
        self, adapter_id: str, directory: str | None = None
    ) -> tuple[bool, AdapterSource] | None:
        """The adapter's peft files for the weight sync: written to ``directory`` (a memory-backed
        directory the samplers on this node read) or, without one, as bytes that the coordinator
        hands, as an object reference, straight to the samplers. Every rank is called (ZeRO-3
        gathers the weights); rank 0, called with ``num_returns=2``, answers an acknowledgement
        (which the coordinator awaits, to see a death) and the files (which it never fetches);
        the others return None."""
        tensors = self._adapter_tensors(adapter_id)
        if self.rank != 0:
            return None
        config_json = self.lora.config_json(adapter_id)
        if directory is not None:
            return True, AdapterSource(path=write_peft_dir(tensors, config_json, directory).path)
        return True, AdapterSource(blob=adapter_blob(tensors, config_json))

    def save_checkpoint(self, work: SaveCheckpointWork) -> SavedCheckpoint | None:
        """Every rank gathers the full state (a collective); rank 0 writes and uploads the
        archive."""
        adapter = self._activate(work.adapter_id)
        weights = self._adapter_tensors(work.adapter_id)
        step, tensors = 0, dict[str, "torch.Tensor"]()
        if work.with_optimizer:
            step, tensors = adapter.export_state(self.lora.named_params(work.adapter_id))
        if self.rank != 0:
            return None
        meta = work.meta.model_copy(update={"step": adapter.step, "has_optimizer": bool(tensors)})
        config_json = self.lora.config_json(work.adapter_id)
        stored = upload_checkpoint(
            self.site, work.archive, meta, weights, config_json, tensors, step
        )
        return SavedCheckpoint(stored=stored, meta=meta)

    def load_checkpoint(self, work: LoadCheckpointWork) -> int:
        """Set a fresh adapter's weights (and optimizer state) from an archive; returns its step."""
        loaded = fetch_checkpoint(self.site, work.archive)
        return self._set_state(
            work.adapter_id, loaded.weights, loaded.optimizer, loaded.meta.step, work.with_optimizer
        )

    def snapshot(self, adapter_id: str) -> tuple[bool, AdapterSnapshot] | None:
        """The adapter's weights and AdamW state in memory. Every rank must call it (gathering
        ZeRO-partitioned optimizer state is a collective, as in ``save_checkpoint``); rank 0,
        called with ``num_returns=2``, returns an acknowledgement and the snapshot. After a step the
        fp32 masters are the weights; before any step the parameters themselves are."""
        adapter = self._activate(adapter_id)
        _, tensors = adapter.export_state(self.lora.named_params(adapter_id))
        if not tensors:  # every rank: a gather under ZeRO-3
            tensors = {
                f"weights/{n}": t.float() for n, t in self._adapter_tensors(adapter_id).items()
            }
        if self.rank != 0:
            return None
        return True, encode_snapshot(adapter.step, tensors)

    def restore_snapshot(self, adapter_id: str, snap: AdapterSnapshot) -> int:
        """Set a freshly created adapter to a snapshot taken on an earlier incarnation of the
        ranks."""
        weights, optimizer = decode_snapshot(snap)
        self._set_state(adapter_id, weights, optimizer, snap.step, with_optimizer=True)
        self._engine(adapter_id).step = snap.step
        return snap.step

    def _set_state(
        self,
        adapter_id: str,
        weights: dict[str, torch.Tensor],
        optimizer: dict[str, torch.Tensor],
        step: int,
        with_optimizer: bool,
    ) -> int:
        """Weights (the fp32 masters when the optimizer state has them) and, if asked, AdamW
        state."""
        adapter = self._activate(adapter_id)
        params = self.lora.named_params(adapter_id)
        return adapter.set_state(params, weights, optimizer, step, with_optimizer)

    def adapter_state(self, adapter_id: str) -> dict[str, list[float]]:
        """The adapter's tensors, flattened (tests compare them across ZeRO stages); a collective
        under ZeRO-3."""
        return {
            k: v.float().flatten().tolist() for k, v in self._adapter_tensors(adapter_id).items()
        }

    def ping(self) -> int:
        """This rank's index (the liveness check)."""
        return self.rank

    def status(self) -> WorkerStatus:
        """Memory and adapters of this rank, for ``GET /api/v1/tinsmith/status``."""
        import psutil

        state_bytes = sum(
            adapter.held_bytes(self.lora.params(name)) for name, adapter in self.engines.items()
        )
        node_id, node_resources = node_info()
        return WorkerStatus(
            kind="trainer",
            index=self.rank,
            pid=os.getpid(),
            rss_bytes=psutil.Process().memory_info().rss,
            adapters=len(self.engines),
            adapter_param_bytes=state_bytes,
            node_id=node_id,
            node_resources=node_resources,
        )
