"""What bounds a training step's memory at long sequences: gradient checkpointing of the decoder
layers, and target logprobs computed over chunks of tokens.

Without them a micro-batch keeps every layer's activations and ``tokens x vocabulary`` fp32
logits (and their softmax for the backward) at once; with them it keeps one hidden state per
layer and one chunk's logits. Both leave values and gradients as they were (the recompute runs
the same operations), at the price of recomputing the layers' forward (checkpointing) or the
unembedding's (chunks) in the backward.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def checkpointable_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder (and vision) layers that transformers can checkpoint, each given
    PyTorch's non-reentrant checkpoint (LoRA weights inside a frozen model get their gradients
    without inputs that require grad)."""
    import torch.utils.checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    from tinsmith.actors import malloc_tuning

    layers: list[torch.nn.Module] = [
        m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)
    ]
    for layer in layers:
        layer._gradient_checkpointing_func = functools.partial(  # type: ignore[assignment]
            torch.utils.checkpoint.checkpoint, use_reentrant=False
        )
        layer.register_forward_pre_hook(lambda _module, _args: malloc_tuning.between_layers())
    return layers


def set_checkpointing(layers: list[torch.nn.Module], on: bool) -> None:
    """Checkpoint these layers in the next forward, or not. transformers checkpoints a layer only
    in training mode; the flag is set on the layers themselves, not their children, so dropout
    and the like keep the model's evaluation mode."""
    for layer in layers:
        layer.gradient_checkpointing = on  # type: ignore[assignment]
        layer.training = on


def target_logprobs(
    head: torch.nn.Module, hidden_B_T_H: torch.Tensor, targets_B_T: torch.Tensor, chunks: int
) -> torch.Tensor:
    """log p(target) per position, in fp32, from the last hidden states and the unembedding.

    In ``chunks`` pieces of the flattened tokens (exactly that many calls of ``head``, some
    maybe empty: under ZeRO-3 each call is a collective), each recomputed in the backward, so
    only one piece's logits exist at a time. One chunk: computed directly, nothing recomputed.
    """
    import torch
    import torch.utils.checkpoint

    B, T, H = hidden_B_T_H.shape
    hidden = hidden_B_T_H.reshape(B * T, H)
    targets = targets_B_T.reshape(B * T)
    if chunks <= 1:
        return _chunk_logprobs(head, hidden, targets).reshape(B, T)
    size = math.ceil(B * T / chunks)
    pieces = []
    for k in range(chunks):
        h, t = hidden[k * size : (k + 1) * size], targets[k * size : (k + 1) * size]
        if torch.is_grad_enabled():
            piece = torch.utils.checkpoint.checkpoint(
                _chunk_logprobs, head, h, t, use_reentrant=False
            )
        else:
            piece = _chunk_logprobs(head, h, t)
        pieces.append(piece)
    return torch.cat(pieces).reshape(B, T)


def _chunk_logprobs(
    head: torch.nn.Module, hidden_N_H: torch.Tensor, targets_N: torch.Tensor
) -> torch.Tensor:
    """``-cross_entropy``: the fused kernel never materialises the ``N x V`` log-probabilities,
    and its backward is a single softmax-minus-one-hot."""
    import torch

    from tinsmith.actors import malloc_tuning

    malloc_tuning.between_layers()
    logits_N_V = head(hidden_N_H).float()
    return -torch.nn.functional.cross_entropy(logits_N_V, targets_N, reduction="none")
