"""The trainer worker actor: one data-parallel rank of DeepSpeed LoRA training.

Each rank holds one copy of the base model and any number of peft LoRA adapters on it (one per
training client). Every adapter has its own DeepSpeed engine (and optimizer) over a thin view
module, so hooks and optimizer state never mix between adapters. Gradients accumulate across
``forward_backward`` calls until ``optim_step`` (DeepSpeed's unmanaged gradient accumulation),
which matches Tinker's semantics.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.actors.node_info import node_info
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.storage.transfer import StorageSite
from tinsmith.types.internal import (
    AdapterBlob,
    AdapterSnapshot,
    AdapterSource,
    AdapterSpec,
    DatumResult,
    LoadCheckpointWork,
    MicroBatch,
    OptimStepWork,
    RankResult,
    RankWork,
    SaveCheckpointWork,
    SavedAdapter,
    SavedCheckpoint,
    WorkerStatus,
)
from tinsmith.types.settings import TrainerConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

log = logging.getLogger(__name__)

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)
LORA_ALPHA = 32
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "tinsmith_checkpoint.json"


def lora_target_modules(train_attn: bool, train_mlp: bool, train_unembed: bool) -> list[str]:
    targets: list[str] = []
    if train_attn:
        targets += ATTN_MODULES
    if train_mlp:
        targets += MLP_MODULES
    if train_unembed:
        targets += UNEMBED_MODULES
    return targets


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
        threads = config.torch_threads or max(1, (os.cpu_count() or 1) // world_size)
        # Ray starts workers with OMP_NUM_THREADS=1; torch is not imported yet, so set the real budget first.
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        import torch

        torch.set_num_threads(threads)
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.rank = rank
        self.world_size = world_size
        self.config = config
        self.site = site
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        self.dtype = torch.float32 if config.dtype == "float32" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        model.requires_grad_(False)
        model.config.use_cache = False
        model.to(self.device)  # type: ignore[arg-type]
        self.base = model
        self.peft: PeftModel | None = None
        self.engines: dict[str, object] = {}
        self.steps: dict[str, int] = {}
        self.clips: dict[str, _Clip] = {}
        log.info("trainer rank %d/%d ready (%s, %d threads)", rank, world_size, backend, threads)

    # ----- adapters -------------------------------------------------------------------------
    def create_adapter(self, spec: AdapterSpec) -> int:
        """Add a LoRA adapter and its engine; returns the number of trainable parameters."""
        import deepspeed
        import torch
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        from tinsmith.actors.optimizer_state import reset_lazy_state

        lora = spec.lora
        targets = lora_target_modules(lora.train_attn, lora.train_mlp, lora.train_unembed)
        if not targets:
            raise UserInputError(
                "lora_config trains nothing: set train_attn, train_mlp or train_unembed"
            )
        peft_cfg = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules=targets,
            bias="none",
        )
        torch.manual_seed(lora.seed if lora.seed is not None else 0)
        name = spec.adapter_id
        if self.peft is None:
            self.peft = get_peft_model(self.base, peft_cfg, adapter_name=name)
        else:
            self.peft.add_adapter(name, peft_cfg)
        params = self._adapter_params(name)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0
        )
        view = _AdapterView(self.peft, name)
        owned = len(list(view.parameters()))  # type: ignore[attr-defined]
        assert owned == len(params), f"the view holds {owned} parameters, the adapter {len(params)}"
        engine, _, _, _ = deepspeed.initialize(
            model=view, optimizer=optimizer, config=self._ds_config()
        )
        reset_lazy_state(engine)
        if engine.optimizer is optimizer:  # fp32 ZeRO-0: DeepSpeed hands the plain AdamW back
            self.clips[name] = _clip_in_step(optimizer)
        self.engines[name] = engine
        self.steps[name] = 0
        return sum(p.numel() for p in params)

    def unload_adapter(self, adapter_id: str) -> None:
        """Drop an adapter, its engine and its optimizer state (idempotent)."""
        import gc

        engine = self.engines.pop(adapter_id, None)
        self.steps.pop(adapter_id, None)
        self.clips.pop(adapter_id, None)
        if engine is None or self.peft is None:
            return
        destroy = getattr(engine, "destroy", None)
        if callable(destroy):
            destroy()
        del engine
        if len(self.peft.peft_config) > 1:
            if self.peft.active_adapter == adapter_id:
                self.peft.set_adapter(next(n for n in self.peft.peft_config if n != adapter_id))
            self.peft.delete_adapter(adapter_id)
        else:  # the last adapter: take the LoRA layers out, back to the bare base model
            self.base = self.peft.unload()
            self.peft = None
        gc.collect()

    def _adapter_params(self, name: str) -> list[torch.nn.Parameter]:
        return list(self._named_adapter_params(name).values())

    def _named_adapter_params(self, name: str) -> dict[str, torch.nn.Parameter]:
        """This adapter's parameters under peft's saved names (adapter name removed)."""
        assert self.peft is not None
        marker = f".{name}."
        return {n.replace(marker, "."): p for n, p in self.peft.named_parameters() if marker in n}

    def _ds_config(self) -> dict[str, object]:
        cfg: dict[str, object] = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": 0.0,
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "zero_optimization": {"stage": self.config.zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        if self.config.dtype == "bfloat16":
            cfg["bf16"] = {"enabled": True}
        return cfg

    def _engine(self, adapter_id: str) -> object:
        engine = self.engines.get(adapter_id)
        if engine is None:
            raise NotFoundError(f"adapter {adapter_id!r} is not loaded on trainer rank {self.rank}")
        return engine

    def _activate(self, adapter_id: str) -> object:
        """Make the adapter peft's active (and only trainable) one: before its forward, and before
        reading or setting its optimizer state (ZeRO-3 skips parameters that do not require grad)."""
        engine = self._engine(adapter_id)
        assert self.peft is not None
        if self.peft.active_adapter != adapter_id:
            self.peft.set_adapter(adapter_id)
        # peft's set_adapter toggles requires_grad; keep only this adapter trainable
        for p in self._adapter_params(adapter_id):
            p.requires_grad_(True)
        return engine

    # ----- forward / backward ------------------------------------------------------------
    def forward_backward(self, work: RankWork) -> RankResult:
        """Run every micro-batch; gradients accumulate into this adapter until optim_step."""
        import torch

        from tinsmith.actors.losses import LOSSES

        started = time.perf_counter()
        engine = self._activate(work.adapter_id)
        loss_fn = LOSSES[work.loss_fn]
        results: list[DatumResult] = []
        loss_total = 0.0
        tokens = 0
        for batch in work.micro_batches:
            if not batch.datums:
                self._dummy_pass(engine, backward=not work.forward_only)
                continue
            with torch.set_grad_enabled(not work.forward_only):
                logprobs_B_T, inputs, mask_B_T = self._forward(engine, batch)
                # where, not multiply: a non-finite loss on a padding position must not leak in as NaN
                loss_B_T = torch.where(
                    mask_B_T > 0, loss_fn(logprobs_B_T, inputs, work.loss_fn_config), 0.0
                )
                if not work.forward_only:
                    engine.backward(loss_B_T.sum() * work.grad_scale, scale_wrt_gas=False)  # type: ignore[attr-defined]
            loss_total += float(loss_B_T.detach().sum())
            for row, datum in enumerate(batch.datums):
                n = datum.length
                tokens += n
                results.append(
                    DatumResult(
                        index=datum.index,
                        logprobs=logprobs_B_T[row, :n].detach().float().tolist(),
                        elementwise_loss=loss_B_T[row, :n].detach().float().tolist(),
                    )
                )
        return RankResult(
            datums=results,
            loss_sum=loss_total,
            tokens=tokens,
            seconds=time.perf_counter() - started,
        )

    def _dummy_pass(self, engine: object, backward: bool) -> None:
        """A zero-loss pass over one token, for a rank with fewer micro-batches than its peers.

        Data-parallel backward passes are collectives, and under ZeRO-3 so are forward passes (they
        gather the adapter's partitioned weights), so every rank must run as many as the others.
        """
        import torch

        if not backward and self.config.zero_stage != 3:
            return
        input_ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(backward):
            logits = engine(input_ids=input_ids)  # type: ignore[operator]
            if backward:
                engine.backward(logits.float().sum() * 0.0, scale_wrt_gas=False)  # type: ignore[attr-defined]

    def _forward(
        self, engine: object, batch: MicroBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Target logprobs ``(B, T)`` in fp32, the padded loss inputs and the padding mask."""
        import torch

        datums = batch.datums
        longest = max(d.length for d in datums)
        B = len(datums)
        input_ids = torch.zeros((B, longest), dtype=torch.long)
        targets = torch.zeros((B, longest), dtype=torch.long)
        mask = torch.zeros((B, longest), dtype=torch.float32)
        keys = ["weights", *sorted(datums[0].extra)]
        inputs = {k: torch.zeros((B, longest), dtype=torch.float32) for k in keys}
        for row, d in enumerate(datums):
            n = d.length
            input_ids[row, :n] = torch.tensor(d.input_tokens)
            targets[row, :n] = torch.tensor(d.target_tokens)
            mask[row, :n] = 1.0
            inputs["weights"][row, :n] = torch.tensor(d.weights)
            for k, v in d.extra.items():
                inputs[k][row, :n] = torch.tensor(v)
        dev = self.device
        # Without padding, no mask: attention then takes the fast causal path.
        attention_mask = None if all(d.length == longest for d in datums) else mask.to(dev).long()
        logits_B_T_V = engine(input_ids=input_ids.to(dev), attention_mask=attention_mask)  # type: ignore[operator]
        logprobs_B_T = target_logprobs(logits_B_T_V, targets.to(dev))
        return logprobs_B_T, {k: v.to(dev) for k, v in inputs.items()}, mask.to(dev)

    # ----- optimizer ----------------------------------------------------------------------
    def optim_step(self, work: OptimStepWork) -> dict[str, float]:
        """Apply AdamW with this call's hyper-parameters to the accumulated gradients."""
        engine = self._activate(work.adapter_id)
        adam = work.adam
        optimizer = engine.optimizer  # type: ignore[attr-defined]
        for group in optimizer.param_groups:
            group["lr"] = adam.learning_rate
            group["betas"] = (adam.beta1, adam.beta2)
            group["eps"] = adam.eps
            group["weight_decay"] = adam.weight_decay
        clip = self.clips.get(work.adapter_id)
        if clip is not None:
            clip.max_norm = adam.grad_clip_norm
        else:  # DeepSpeed's ZeRO and low-precision optimizers clip by their global norm
            optimizer.clip_grad = adam.grad_clip_norm
        engine.step()  # type: ignore[attr-defined]
        self.steps[work.adapter_id] += 1
        norm = clip.norm if clip is not None else engine.get_global_grad_norm()  # type: ignore[attr-defined]
        metrics = {"learning_rate:mean": adam.learning_rate}
        if norm is not None:
            metrics["grad_norm:mean"] = float(norm)
        return metrics

    # ----- weights ------------------------------------------------------------------------
    def node_id(self) -> str:
        return node_info()[0]

    def export_adapter(self, adapter_id: str, directory: str | None = None) -> AdapterSource | None:
        """The adapter's peft files for the weight sync: written to ``directory`` (a memory-backed
        directory the samplers on this node read) or, without one, as bytes that the coordinator
        hands, as an object reference, straight to the samplers. Every rank is called (ZeRO-3
        gathers the weights); rank 0 answers, the others return None."""
        from safetensors.torch import save

        tensors = self._adapter_tensors(adapter_id)
        if self.rank != 0:
            return None
        if directory is not None:
            return AdapterSource(path=self._write_adapter(adapter_id, tensors, directory).path)
        files = {
            "adapter_model.safetensors": save(tensors),
            "adapter_config.json": self._adapter_config(adapter_id),
        }
        return AdapterSource(blob=AdapterBlob(files=files))

    def _adapter_config(self, adapter_id: str) -> bytes:
        """peft's own ``adapter_config.json`` for the adapter."""
        assert self.peft is not None
        with tempfile.TemporaryDirectory() as tmp:
            self.peft.peft_config[adapter_id].save_pretrained(tmp)
            return (Path(tmp) / "adapter_config.json").read_bytes()

    def _adapter_tensors(self, adapter_id: str) -> dict[str, torch.Tensor]:
        """The adapter's weights under peft's saved names, on the CPU. Taken from its parameters
        directly: peft's ``get_peft_model_state_dict`` walks the whole model's state dict, which
        cost more than the rest of a weight sync's export. Under ZeRO-3 the parameters are
        partitioned and gathering them is a collective: every rank must call this together."""
        import deepspeed

        self._engine(adapter_id)
        params = self._named_adapter_params(adapter_id)
        zero3 = self.config.zero_stage == 3
        with deepspeed.zero.GatheredParameters(list(params.values()), enabled=zero3):
            # a copy under ZeRO-3: the gathered storage is released on leaving the block
            tensors = {n: p.detach().cpu() for n, p in params.items()}
            return {n: t.clone() if zero3 else t.contiguous() for n, t in tensors.items()}

    def _write_adapter(
        self, adapter_id: str, tensors: dict[str, torch.Tensor], directory: str
    ) -> SavedAdapter:
        """Write the adapter as a peft directory that vLLM and ``PeftModel.from_pretrained`` load."""
        from safetensors.torch import save_file

        out = Path(directory)
        tmp = out.with_name(out.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_bytes(self._adapter_config(adapter_id))
        os.replace(tmp, out) if not out.exists() else _replace_dir(tmp, out)
        size = sum(f.stat().st_size for f in out.iterdir())
        return SavedAdapter(path=str(out), size_bytes=size)

    def save_checkpoint(self, work: SaveCheckpointWork) -> SavedCheckpoint | None:
        """Every rank gathers the full state (a collective); rank 0 writes and uploads the archive."""
        import tempfile

        from safetensors.torch import save_file

        from tinsmith.actors.optimizer_state import export_state
        from tinsmith.storage.transfer import upload_dir

        engine = self._activate(work.adapter_id)
        weights = self._adapter_tensors(work.adapter_id)
        step, tensors = 0, dict[str, "torch.Tensor"]()
        if work.with_optimizer:
            step, tensors = export_state(engine, self._named_adapter_params(work.adapter_id))
        if self.rank != 0:
            return None
        meta = work.meta.model_copy(
            update={"step": self.steps[work.adapter_id], "has_optimizer": bool(tensors)}
        )
        with tempfile.TemporaryDirectory(dir=self.site.staging()) as tmp:
            out = Path(tmp) / "checkpoint"
            self._write_adapter(work.adapter_id, weights, str(out))
            if tensors:
                save_file(tensors, str(out / OPTIMIZER_FILE), metadata={"step": str(step)})
            (out / META_FILE).write_text(meta.model_dump_json(indent=1))
            stored = upload_dir(self.site, work.archive, out)
        return SavedCheckpoint(stored=stored, meta=meta)

    def load_checkpoint(self, work: LoadCheckpointWork) -> int:
        """Set a fresh adapter's weights (and optimizer state) from an archive; returns its step."""
        from safetensors.torch import load_file

        from tinsmith.storage.transfer import fetch_dir
        from tinsmith.types.internal import CheckpointMeta

        directory = fetch_dir(self.site, work.archive)
        meta = CheckpointMeta.model_validate_json((directory / META_FILE).read_text())
        weights = load_file(str(directory / "adapter_model.safetensors"))
        optimizer = load_file(str(directory / OPTIMIZER_FILE)) if meta.has_optimizer else {}
        return self._set_state(work.adapter_id, weights, optimizer, meta.step, work.with_optimizer)

    def snapshot(self, adapter_id: str) -> tuple[bool, AdapterSnapshot] | None:
        """The adapter's weights and AdamW state in memory. Every rank must call it (gathering
        ZeRO-partitioned optimizer state is a collective, as in ``save_checkpoint``); rank 0,
        called with ``num_returns=2``, returns an acknowledgement and the snapshot. After a step the
        fp32 masters are the weights; before any step the parameters themselves are."""
        from safetensors.torch import save

        from tinsmith.actors.optimizer_state import export_state

        engine = self._activate(adapter_id)
        params = self._named_adapter_params(adapter_id)
        _, tensors = export_state(engine, params)
        if not tensors:  # every rank: a gather under ZeRO-3
            tensors = {
                f"weights/{n}": t.float() for n, t in self._adapter_tensors(adapter_id).items()
            }
        if self.rank != 0:
            return None
        return True, AdapterSnapshot(step=self.steps[adapter_id], tensors=save(tensors))

    def restore_snapshot(self, adapter_id: str, snap: AdapterSnapshot) -> int:
        """Set a freshly created adapter to a snapshot taken on an earlier incarnation of the ranks."""
        from safetensors.torch import load

        tensors = load(snap.tensors)
        weights = {
            k.split("/", 1)[1]: v
            for k, v in tensors.items()
            if k.startswith(("weights/", "master/"))
        }
        optimizer = {k: v for k, v in tensors.items() if not k.startswith("weights/")}
        self._set_state(adapter_id, weights, optimizer, snap.step, with_optimizer=True)
        self.steps[adapter_id] = snap.step
        return snap.step

    def _set_state(
        self,
        adapter_id: str,
        weights: dict[str, torch.Tensor],
        optimizer: dict[str, torch.Tensor],
        step: int,
        with_optimizer: bool,
    ) -> int:
        """Weights (the fp32 masters when the optimizer state has them) and, if asked, AdamW state."""
        from tinsmith.actors.optimizer_state import import_state, set_weights

        engine = self._activate(adapter_id)
        params = self._named_adapter_params(adapter_id)
        missing = sorted(set(params) - set(weights))
        if missing:
            raise UserInputError(
                f"checkpoint does not fit this adapter: {len(missing)} tensors missing (e.g. {missing[0]})"
            )
        masters = {n: optimizer[f"master/{n}"] for n in params if f"master/{n}" in optimizer}
        set_weights(engine, params, {n: masters.get(n, weights[n]) for n in params})
        self.steps[adapter_id] = 0
        if with_optimizer and optimizer:
            import_state(engine, params, step, optimizer)
            self.steps[adapter_id] = step
        return self.steps[adapter_id]

    def adapter_state(self, adapter_id: str) -> dict[str, list[float]]:
        """The adapter's tensors, flattened (tests compare them across ZeRO stages); a collective under ZeRO-3."""
        return {
            k: v.float().flatten().tolist() for k, v in self._adapter_tensors(adapter_id).items()
        }

    def ping(self) -> int:
        return self.rank

    def status(self) -> WorkerStatus:
        import psutil

        state_bytes = 0
        for name, engine in self.engines.items():
            held = [
                getattr(p, "ds_tensor", p) for p in self._adapter_params(name)
            ]  # this rank's part under ZeRO-3
            state_bytes += sum(t.numel() * t.element_size() for t in held)
            optimizer = getattr(engine, "optimizer", None)
            for group_state in getattr(
                getattr(optimizer, "optimizer", optimizer), "state", {}
            ).values():
                for value in group_state.values():
                    if hasattr(value, "numel"):
                        state_bytes += value.numel() * value.element_size()
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


def target_logprobs(logits_B_T_V: torch.Tensor, targets_B_T: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in fp32.

    Uses the fused cross-entropy kernel (``-cross_entropy`` is the target logprob) rather than a
    full log-softmax plus gather: it never materialises the ``B x T x V`` log-probabilities and
    its backward is a single softmax-minus-one-hot, which is most of a LoRA step's cost at
    SmolLM2's 49k vocabulary.
    """
    import torch

    B, T, V = logits_B_T_V.shape
    nll = torch.nn.functional.cross_entropy(
        logits_B_T_V.float().reshape(B * T, V), targets_B_T.reshape(B * T), reduction="none"
    )
    return -nll.reshape(B, T)


@dataclass
class _Clip:
    """The clipping threshold for an adapter's next step (0: off) and the norm measured in its last one."""

    max_norm: float = 0.0
    norm: float | None = None


def _clip_in_step(optimizer: torch.optim.Optimizer) -> _Clip:
    """Measure and clip a plain optimizer's gradients (fp32 ZeRO-0) in a step pre-hook: by then
    ``engine.step()`` has all-reduced them. DeepSpeed's own ZeRO-0 clipping keeps no norm, and one
    taken before ``engine.step()`` would see only this rank's gradients."""
    import torch

    clip = _Clip()

    def measure_and_clip(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        clip.norm = float(torch.nn.utils.clip_grad_norm_(params, clip.max_norm or float("inf")))

    optimizer.register_step_pre_hook(measure_and_clip)
    return clip


def _replace_dir(tmp: Path, out: Path) -> None:
    import shutil

    old = out.with_name(out.name + ".old")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _make_view_class() -> type:
    import torch

    class AdapterView(torch.nn.Module):
        """The module an adapter's DeepSpeed engine wraps: the adapter's own LoRA layers only.

        The shared peft model is held outside the module tree, so each engine sees (broadcasts,
        all-reduces, and under ZeRO-3 partitions and gathers) its adapter's parameters and never
        the base weights or another tenant's adapter. ZeRO-3's hooks sit on the LoRA layers and fire
        when peft calls them inside the shared model's forward.
        """

        def __init__(self, peft_model: torch.nn.Module, adapter_id: str) -> None:
            super().__init__()
            self.shared = (peft_model,)  # a tuple: not registered as a submodule
            self.adapter_id = adapter_id
            suffix = f".{adapter_id}"
            self.lora = torch.nn.ModuleList(
                m
                for n, m in peft_model.named_modules()
                if n.endswith(suffix) and next(m.parameters(recurse=False), None) is not None
            )

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            out = self.shared[0](
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            )
            return out.logits

    return AdapterView


def _AdapterView(peft_model: object, adapter_id: str) -> object:
    return _make_view_class()(peft_model, adapter_id)
