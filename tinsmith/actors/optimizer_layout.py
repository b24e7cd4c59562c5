"""Which DeepSpeed optimizer holds an adapter's AdamW state, chosen from the trainer's settings.

DeepSpeed wraps the AdamW it is given in a different optimizer per ZeRO stage and dtype, and
each keeps the moments and fp32 master weights in its own layout. The settings fix which one it
builds, so the layout is chosen once from them (and the built optimizer checked against it)
instead of being guessed from attributes of DeepSpeed's objects wherever the state is touched.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

DeepSpeedOptimizer = Any
"""What ``engine.optimizer`` is (DeepSpeed ships no types): the AdamW itself, or the DeepSpeed
wrapper that its ``OptimizerLayout`` names."""


class OptimizerLayout(Enum):
    """Where an engine's AdamW keeps its moments and fp32 masters."""

    TORCH = "torch"
    """fp32 at ZeRO-0: DeepSpeed hands back the plain torch AdamW; its state is keyed by the
    parameters themselves, which are the fp32 weights."""
    UNFUSED_BF16 = "unfused_bf16"
    """bf16 at ZeRO-0: DeepSpeed's ``FP16_UnfusedOptimizer``, a whole fp32 master tensor per bf16
    parameter, on which the inner AdamW keeps its state."""
    ZERO_1_2 = "zero_1_2"
    """ZeRO-1 or ZeRO-2: ``DeepSpeedZeroOptimizer``, one flat fp32 partition per rank; each
    parameter's fragment of it is linked through ``_hp_mapping``."""
    ZERO_3 = "zero_3"
    """ZeRO-3: ``DeepSpeedZeroOptimizer_Stage3``; parameters, masters and state all partitioned."""

    @classmethod
    def for_config(cls, zero_stage: int, dtype: str) -> OptimizerLayout:
        """The layout DeepSpeed builds for ``TrainerConfig.zero_stage`` and ``dtype``."""
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"no optimizer layout for dtype {dtype!r}")
        if zero_stage == 0:
            return cls.TORCH if dtype == "float32" else cls.UNFUSED_BF16
        if zero_stage in (1, 2):
            return cls.ZERO_1_2
        if zero_stage == 3:
            return cls.ZERO_3
        raise ValueError(f"no optimizer layout for ZeRO stage {zero_stage!r}")

    @property
    def per_parameter(self) -> bool:
        """Whether every parameter has whole tensors of its own in the optimizer (ZeRO-0)."""
        return self in (OptimizerLayout.TORCH, OptimizerLayout.UNFUSED_BF16)

    def check(self, optimizer: DeepSpeedOptimizer, client: object) -> None:
        """Refuse an engine whose optimizer is not the one this layout expects (``client``: the
        AdamW given to ``deepspeed.initialize``), e.g. after a DeepSpeed upgrade changed its
        choice."""
        if self is OptimizerLayout.TORCH:
            if optimizer is not client:
                raise TypeError(
                    f"optimizer layout {self.name} expects DeepSpeed to hand back the torch AdamW,"
                    f" but it built {type(optimizer).__qualname__}"
                )
            return
        expected = _deepspeed_class(self)
        if not isinstance(optimizer, expected):
            raise TypeError(
                f"optimizer layout {self.name} expects DeepSpeed's {expected.__qualname__},"
                f" but it built {type(optimizer).__qualname__}"
            )


def _deepspeed_class(layout: OptimizerLayout) -> type:
    if layout is OptimizerLayout.UNFUSED_BF16:
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

        return FP16_UnfusedOptimizer
    if layout is OptimizerLayout.ZERO_1_2:
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

        return DeepSpeedZeroOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    return DeepSpeedZeroOptimizer_Stage3
