"""Attention over packed rows: several datums in one row, each attending only to itself.

Registered with transformers as the ``tinsmith_segments`` attention implementation of the
trainer's text models. With ``segments`` (each datum's ``(start, end)`` in the row) it runs
PyTorch's causal SDPA once per datum, so the cost is the sum of the datums' squared lengths and
each datum sees exactly the attention it would alone; without them (padded micro-batches) it is
transformers' own SDPA with its mask. The model must also be
given position ids that restart at each datum (RoPE then places every datum at 0..n-1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAME = "tinsmith_segments"
Segments = tuple[tuple[int, int], ...]


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    segments: Segments | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``(batch, tokens, heads, head_dim)`` attention output, as transformers' SDPA returns it.
    ``kwargs``: the rest of what the model passes (position ids and the like), unused here."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal
        )
    outputs = [
        sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            dropout,
            scaling,
            is_causal=True,
        )[0]
        for start, end in segments
    ]
    return torch.cat(outputs, dim=1), None


def register() -> str:
    """Register the implementation with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    # Padded rows need SDPA's mask. For a packed row transformers also builds one from the
    # restarting position ids (a T x T boolean, 64 MB at 8k tokens), which segment_attention
    # does not read.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
