"""The optimizer layout follows from the ZeRO stage and dtype alone (no DeepSpeed needed), and the
trainer's modules stay cheap to import."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from tinsmith.actors.optimizer_layout import OptimizerLayout
from tinsmith.types.settings import TrainerConfig

EXPECTED = {
    (0, "float32"): OptimizerLayout.TORCH,
    (0, "bfloat16"): OptimizerLayout.UNFUSED_BF16,
    (1, "float32"): OptimizerLayout.ZERO_1_2,
    (1, "bfloat16"): OptimizerLayout.ZERO_1_2,
    (2, "float32"): OptimizerLayout.ZERO_1_2,
    (2, "bfloat16"): OptimizerLayout.ZERO_1_2,
    (3, "float32"): OptimizerLayout.ZERO_3,
    (3, "bfloat16"): OptimizerLayout.ZERO_3,
}


def test_every_config_pair_is_covered() -> None:
    stages = get_args(TrainerConfig.model_fields["zero_stage"].annotation)
    dtypes = get_args(TrainerConfig.model_fields["dtype"].annotation)
    assert set(EXPECTED) == {(s, d) for s in stages for d in dtypes}


@pytest.mark.parametrize(("stage", "dtype"), sorted(EXPECTED))
def test_layout_for_config(stage: int, dtype: str) -> None:
    config = TrainerConfig(zero_stage=stage, dtype=dtype)  # type: ignore[arg-type]
    layout = OptimizerLayout.for_config(config.zero_stage, config.dtype)
    assert layout is EXPECTED[stage, dtype]
    assert layout.per_parameter == (stage == 0)


@pytest.mark.parametrize(("stage", "dtype"), [(4, "float32"), (0, "float16"), (-1, "bfloat16")])
def test_unknown_configs_are_refused(stage: int, dtype: str) -> None:
    with pytest.raises(ValueError, match="no optimizer layout"):
        OptimizerLayout.for_config(stage, dtype)


def test_torch_layout_refuses_a_wrapped_optimizer() -> None:
    adamw = object()
    OptimizerLayout.TORCH.check(adamw, adamw)
    with pytest.raises(TypeError, match="TORCH expects DeepSpeed to hand back the torch AdamW"):
        OptimizerLayout.TORCH.check(object(), adamw)


def test_trainer_modules_import_without_torch_or_deepspeed() -> None:
    modules = (
        "trainer",
        "adapter_engine",
        "checkpoint_io",
        "forward_backward",
        "lora_adapters",
        "optimizer_layout",
        "optimizer_state",
        "rank_setup",
    )
    code = (
        f"import sys\nfor m in {modules!r}: __import__('tinsmith.actors.' + m)\n"
        "bad = [m for m in ('torch', 'deepspeed', 'transformers', 'peft', 'safetensors')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
