"""Rank-independent AdamW state of one adapter: export from and import into a DeepSpeed engine.

A checkpoint must load on any number of ranks and any ZeRO stage, so it holds whole tensors
(``exp_avg/<param>``, ``exp_avg_sq/<param>``, ``master/<param>``) and the step count, never
DeepSpeed's flattened per-rank partitions. Under ZeRO 1/2 and the bf16 optimizer, DeepSpeed's
``safe_get_full_*`` helpers gather a parameter's fragments with an all-reduce, so every rank
must call ``export_state`` together, in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MOMENTS = ("exp_avg", "exp_avg_sq")


def _plain(optimizer: object) -> bool:
    import torch

    return isinstance(optimizer, torch.optim.Optimizer)


def export_state(engine: object, params: dict[str, torch.nn.Parameter]) -> tuple[int, dict[str, torch.Tensor]]:
    """(optimizer steps taken, full fp32 tensors); no tensors before the first step."""
    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    optimizer = engine.optimizer  # type: ignore[attr-defined]
    tensors: dict[str, torch.Tensor] = {}
    if _plain(optimizer):
        first = optimizer.state.get(next(iter(params.values())))
        if not first:
            return 0, {}
        for name, p in params.items():
            state = optimizer.state[p]
            for key in _MOMENTS:
                tensors[f"{key}/{name}"] = state[key].detach().float().cpu().clone()
            tensors[f"master/{name}"] = p.detach().float().cpu().clone()
        return int(first["step"]), tensors
    base = optimizer.optimizer
    steps = [s["step"] for s in base.state.values() if "step" in s]
    if not steps:
        return 0, {}
    for name, p in params.items():
        for key in _MOMENTS:
            value = safe_get_full_optimizer_state(p, key)
            tensors[f"{key}/{name}"] = value.detach().float().cpu().clone()
        master = safe_get_full_fp32_param(p)
        tensors[f"master/{name}"] = (master if master is not None else p).detach().float().cpu().clone()
    return int(torch.as_tensor(steps[0]).item()), tensors


def import_state(
    engine: object, params: dict[str, torch.nn.Parameter], step: int, tensors: dict[str, torch.Tensor]
) -> None:
    """Set the optimizer moments and step of a freshly created engine from exported tensors."""
    import torch
    from deepspeed.utils import safe_set_full_optimizer_state

    optimizer = engine.optimizer  # type: ignore[attr-defined]
    step_t = torch.tensor(float(step), dtype=torch.float32)
    if _plain(optimizer):
        for name, p in params.items():
            optimizer.state[p] = {
                "step": step_t.clone(),
                **{key: tensors[f"{key}/{name}"].to(p.device, p.dtype).clone() for key in _MOMENTS},
            }
        return
    base = optimizer.optimizer
    flats = getattr(optimizer, "single_partition_of_fp32_groups", None) or optimizer.fp32_groups_flat_partition
    for flat in flats:
        state = base.state.setdefault(flat, {})
        state["step"] = step_t.clone()
        for key in _MOMENTS:
            state.setdefault(key, torch.zeros_like(flat))
    optimizer._hp_optimizer_states_linked = False
    optimizer._lazy_init_hp_params_optimizer_state()
    for name, p in params.items():
        for key in _MOMENTS:
            safe_set_full_optimizer_state(p, tensors[f"{key}/{name}"].to(p.device), key)


def set_weights(engine: object, params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """Set each parameter (and DeepSpeed's fp32 master copy of it, if any) to a full tensor."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param

    with torch.no_grad():
        for name, p in params.items():
            value = weights[name].to(p.device)
            p.data.copy_(value.to(p.dtype))
            if hasattr(p, "_hp_mapping"):
                safe_set_full_fp32_param(p, value.float())
