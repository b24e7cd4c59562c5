"""Grouped-matmul LoRA ops for vLLM's CPU backend, installed as a vLLM general plugin.

vLLM-CPU applies LoRA with its PyTorch reference ops (`vllm.lora.ops.torch_ops`), which gather a
whole (out x rank) weight matrix for every token before an einsum. With 64 sequences in a batch
that copy dominates: sampling from an adapter ran 8x slower than from the base model, which made
RL rollouts (many short samples per step) crawl. A batch holds only a few distinct adapters, so
these versions do one dense matmul per adapter present instead. Same results (up to float
rounding), same signatures, same output handling as the reference ops, except for tokens of
requests without an adapter: those get none (see ``lora_matmul``).

vLLM runs its model in a spawned worker process, so the patch is applied there through the
`vllm.general_plugins` entry point declared in pyproject.toml (loaded by every vLLM process).
The GPU backends use Triton/CUDA kernels and never call these ops.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def lora_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T, and zero where indices[t] < 0.

    `weights` is (num_slots, [1,] out, in). A negative index is vLLM's mark for a token of a
    request without an adapter (the base model). The reference torch ops index with it as torch
    does, so -1 picks the last slot: a base-model request was served with whatever adapter sat
    in that slot (its logprobs off by ~0.05 once the slot was used, and the lm_head's LoRA
    applies to every request's logits, alone in its batch or not). Here it gets no adapter, as
    on vLLM's GPU kernels.
    """
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype=dtype)
    slots = torch.unique(indices)
    if slots.numel() == 1 and int(slots.item()) >= 0:  # the common case: one adapter in the batch
        return x @ weights[int(slots.item())].to(dtype=dtype).T
    out = x.new_zeros((x.shape[0], weights.shape[1]))
    for slot in slots.tolist():
        if slot < 0:
            continue
        mask = indices == slot
        out[mask] = x[mask] @ weights[slot].to(dtype=dtype).T
    return out


def _adapted(indices: torch.Tensor) -> bool:
    """Whether any token has an adapter: a base-model-only batch (the logits processor's single
    -1 for all of a lone base request's rows, say) needs no matmul at all."""
    return bool((indices >= 0).any())


def _write(
    output: torch.Tensor, outputs: torch.Tensor, indices: torch.Tensor, add_inputs: bool
) -> None:
    """Add ``outputs`` into ``output`` (or set it; one row of ``outputs`` broadcasts over all,
    as in the reference), leaving the rows of adapter-less tokens as they are (``output`` may be
    a view)."""
    if add_inputs:
        output += outputs  # an adapter-less row adds lora_matmul's zero
        return
    adapted = indices >= 0
    if bool(adapted.all()):
        output[:] = outputs
    else:
        output[adapted] = outputs[adapted]


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """The reference ``bgmv_shrink``: project each token onto its adapter's rank (x @ A), scaled
    (zero for a token without an adapter)."""
    if not _adapted(lora_indices_tensor):
        output_tensor[:, : lora_b_weights.shape[-2]] = 0.0
        return
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """The reference ``bgmv_expand``: project back up from the rank (x @ B) into the output; a
    token without an adapter keeps its output row."""
    if not _adapted(lora_indices_tensor):
        return
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # adapter and model may pad differently
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    _write(
        output_tensor[:, :common_len],
        outputs[:limit, :common_len],
        lora_indices_tensor[:limit],
        add_inputs,
    )


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """The reference ``bgmv_expand_slice``: ``bgmv_expand`` into one column slice of a fused
    output (q, k or v of a merged projection)."""
    if not _adapted(lora_indices_tensor):
        return
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write(
        output_tensor[:, slice_offset : slice_offset + slice_size],
        outputs,
        lora_indices_tensor,
        add_inputs,
    )


def install() -> None:
    """Replace the reference bgmv ops wherever vLLM-CPU looks them up (idempotent, per process)."""
    try:
        from vllm.lora.ops import torch_ops
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError as exc:  # a vLLM without these modules: keep its own ops
        log.warning("tinsmith: vLLM CPU LoRA ops not patched (%s)", exc)
        return
    replacements = {
        "bgmv_shrink": bgmv_shrink,
        "bgmv_expand": bgmv_expand,
        "bgmv_expand_slice": bgmv_expand_slice,
    }
    # lora_ops' sgmv_* call the bgmv_* of their own module; punica_cpu imported the names directly.
    for module in (lora_ops, torch_ops, punica_cpu):
        for name, fn in replacements.items():
            if hasattr(module, name):
                setattr(module, name, fn)
