"""Tinker loss functions, summed over tokens (never averaged), exactly as Tinker defines them.

Every function takes the learner's target logprobs ``logprobs_B_T`` and the per-token loss inputs
(padded to ``B x T``, zero where padding), and returns the per-token loss ``loss_B_T``; the
caller sums it. Importing this module imports torch: only actors do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, float | str]], torch.Tensor]


def cross_entropy(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-logprob * weight`` per token; weights may be any real number (custom losses rely on it)."""
    return -logprobs_B_T * inputs["weights"]


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy}
