"""One adapter's DeepSpeed engine and optimizer: creation, AdamW steps, and its state in and out.

Each training client's adapter gets an engine of its own over its ``AdapterView``, so hooks,
gradients and optimizer state never mix between adapters. Which DeepSpeed optimizer the engine
holds (and so where AdamW's state lives) follows from the ZeRO stage and dtype: the engine's
``OptimizerLayout``, chosen once here and handed to ``optimizer_state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tinsmith.actors.optimizer_layout import DeepSpeedOptimizer, OptimizerLayout
from tinsmith.actors.optimizer_state import (
    export_state,
    import_state,
    reset_lazy_state,
    set_weights,
)
from tinsmith.actors.segment_attention import Segments
from tinsmith.errors import UserInputError
from tinsmith.types.settings import TrainerConfig
from tinsmith.types.training import AdamParams

if TYPE_CHECKING:
    import torch


class DeepSpeedEngine(Protocol):
    """What the trainer uses of ``deepspeed.DeepSpeedEngine`` (DeepSpeed ships no types)."""

    optimizer: DeepSpeedOptimizer

    def __call__(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segments: Segments | None = None,
        checkpoint: bool = False,
        logit_chunks: int = 1,
        **images: torch.Tensor,
    ) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> object: ...

    def step(self) -> None: ...

    def get_global_grad_norm(self) -> float | None: ...

    def destroy(self) -> None: ...


def deepspeed_config(config: TrainerConfig) -> dict[str, object]:
    """The DeepSpeed config of every adapter's engine: gradients accumulate unmanaged until
    ``optim_step`` (Tinker's semantics), and clipping is set per step from ``AdamParams``."""
    cfg: dict[str, object] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": {"stage": config.zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if config.dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    return cfg


@dataclass
class GradClip:
    """The clipping threshold for an adapter's next step (0: off) and the norm measured in its
    last one."""

    max_norm: float = 0.0
    norm: float | None = None


def _clip_in_step(optimizer: torch.optim.Optimizer) -> GradClip:
    """Measure and clip a plain optimizer's gradients (fp32 ZeRO-0) in a step pre-hook: by then
    ``engine.step()`` has all-reduced them. DeepSpeed's own ZeRO-0 clipping keeps no norm, and one
    taken before ``engine.step()`` would see only this rank's gradients."""
    import torch

    clip = GradClip()

    def measure_and_clip(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        clip.norm = float(torch.nn.utils.clip_grad_norm_(params, clip.max_norm or float("inf")))

    optimizer.register_step_pre_hook(measure_and_clip)
    return clip


@dataclass
class AdapterEngine:
    """An adapter's DeepSpeed engine, the layout of its optimizer, the fp32 ZeRO-0 clip hook (the
    other layouts clip in DeepSpeed) and the optimizer steps the adapter has taken."""

    engine: DeepSpeedEngine
    layout: OptimizerLayout
    clip: GradClip | None = None
    step: int = 0

    @classmethod
    def create(
        cls, view: torch.nn.Module, params: list[torch.nn.Parameter], config: TrainerConfig
    ) -> AdapterEngine:
        """An engine and AdamW over the adapter's ``view``, whose parameters must be ``params``."""
        import deepspeed
        import torch

        layout = OptimizerLayout.for_config(config.zero_stage, config.dtype)
        optimizer = torch.optim.AdamW(
            params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0
        )
        owned = len(list(view.parameters()))
        assert owned == len(params), f"the view holds {owned} parameters, the adapter {len(params)}"
        engine, _, _, _ = deepspeed.initialize(
            model=view, optimizer=optimizer, config=deepspeed_config(config)
        )
        layout.check(engine.optimizer, optimizer)
        reset_lazy_state(engine.optimizer, layout)
        clip = _clip_in_step(optimizer) if layout is OptimizerLayout.TORCH else None
        return cls(engine=engine, layout=layout, clip=clip)

    def optim_step(self, adam: AdamParams) -> dict[str, float]:
        """Apply AdamW with these hyper-parameters to the accumulated gradients; its metrics."""
        optimizer = self.engine.optimizer
        for group in optimizer.param_groups:
            group["lr"] = adam.learning_rate
            group["betas"] = (adam.beta1, adam.beta2)
            group["eps"] = adam.eps
            group["weight_decay"] = adam.weight_decay
        if self.clip is not None:
            self.clip.max_norm = adam.grad_clip_norm
        else:  # DeepSpeed's ZeRO and low-precision optimizers clip by their global norm
            optimizer.clip_grad = adam.grad_clip_norm
        self.engine.step()
        self.step += 1
        norm = self.clip.norm if self.clip is not None else self.engine.get_global_grad_norm()
        metrics = {"learning_rate:mean": adam.learning_rate}
        if norm is not None:
            metrics["grad_norm:mean"] = float(norm)
        return metrics

    def export_state(
        self, params: dict[str, torch.nn.Parameter]
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """(steps, full fp32 AdamW tensors) as ``optimizer_state.export_state``; a collective."""
        return export_state(self.engine.optimizer, self.layout, params)

    def set_state(
        self,
        params: dict[str, torch.nn.Parameter],
        weights: dict[str, torch.Tensor],
        optimizer: dict[str, torch.Tensor],
        step: int,
        with_optimizer: bool,
    ) -> int:
        """Weights (the fp32 masters when the optimizer state has them) and, if asked, AdamW
        state; returns the adapter's step count."""
        missing = sorted(set(params) - set(weights))
        if missing:
            raise UserInputError(
                f"checkpoint does not fit this adapter: {len(missing)} tensors missing"
                f" (e.g. {missing[0]})"
            )
        masters = {n: optimizer[f"master/{n}"] for n in params if f"master/{n}" in optimizer}
        full = {n: masters.get(n, weights[n]) for n in params}
        set_weights(self.engine.optimizer, self.layout, params, full)
        self.step = 0
        if with_optimizer and optimizer:
            import_state(self.engine.optimizer, self.layout, params, step, optimizer)
            self.step = step
        return self.step

    def held_bytes(self, params: list[torch.nn.Parameter]) -> int:
        """Bytes of the adapter's weights and AdamW state on this rank (its part under ZeRO)."""
        import torch

        zero3 = self.layout is OptimizerLayout.ZERO_3
        held = [p.ds_tensor if zero3 else p for p in params]  # type: ignore[attr-defined]
        total = sum(t.numel() * t.element_size() for t in held)
        optimizer = self.engine.optimizer
        if self.layout is not OptimizerLayout.TORCH:
            optimizer = optimizer.optimizer
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total

    def destroy(self) -> None:
        """Release the engine's hooks and buffers."""
        self.engine.destroy()
