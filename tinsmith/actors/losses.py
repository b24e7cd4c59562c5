"""Tinker loss functions, summed over tokens (never averaged), exactly as Tinker defines them.

Each function takes the learner's target logprobs ``logprobs_B_T`` and the per-token loss inputs
(padded to ``B x T``, zero where padding), and returns the per-token loss ``loss_B_T``; the
caller masks padding and sums. Names: ``tp`` = learner target logprobs, ``sp`` = the sampler's
``logprobs`` input, ``A`` = ``advantages``, ``r = exp(tp - sp)``. Importing this module imports
torch: only the trainer actor does. The loss names, their inputs and their config keys are
declared in ``tinsmith.actors.loss_specs`` (no torch) so the coordinator validates requests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tinsmith.actors.loss_specs import config_value

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, float | str]], torch.Tensor]


def cross_entropy(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-tp * weights``; weights may be any real number (custom losses rely on it)."""
    return -logprobs_B_T * inputs["weights"]


def _ratio(logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.exp(logprobs_B_T - inputs["logprobs"])


def importance_sampling(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-r * A``: REINFORCE corrected for the sampler's policy."""
    return -_ratio(logprobs_B_T, inputs) * inputs["advantages"]


def ppo(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-min(r * A, clip(r, lo, hi) * A)``: the clipped surrogate objective."""
    lo = config_value("ppo", config, "clip_low_threshold")
    hi = config_value("ppo", config, "clip_high_threshold")
    ratio = _ratio(logprobs_B_T, inputs)
    advantages = inputs["advantages"]
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, lo, hi) * advantages)


def cispo(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-sg(clip(r, lo, hi)) * tp * A``: a clipped, stop-gradient
    importance weight on REINFORCE."""
    lo = config_value("cispo", config, "clip_low_threshold")
    hi = config_value("cispo", config, "clip_high_threshold")
    weight = torch.clamp(_ratio(logprobs_B_T, inputs), lo, hi).detach()
    return -weight * logprobs_B_T * inputs["advantages"]


def dro(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """``-(tp * A - beta/2 * (tp - sp)^2)``: policy gradient with a quadratic penalty."""
    beta = config_value("dro", config, "beta")
    diff = logprobs_B_T - inputs["logprobs"]
    return -(logprobs_B_T * inputs["advantages"] - 0.5 * beta * diff * diff)


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
    "cispo": cispo,
    "dro": dro,
}
