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

from tinsmith.actors.loss_specs import DATUM_KEY, config_value

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


def gspo(
    logprobs_B_T: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, float | str]
) -> torch.Tensor:
    """GSPO-token, as Tinker documents it: each datum's sequence log-ratio is the mean of
    ``sg(tp) - sp`` over the tokens ``sequence_ratio_mask`` marks; every token of the datum
    carries ``s = exp(that)`` as its value with its own logprob's gradient,
    ``s_t = exp(mean + tp - sg(tp))``, in the clipped surrogate ``-min(s_t A, clip(s_t, lo, hi)
    A)``. Datums are told apart by the trainer's DATUM_KEY input (rows may be packed)."""
    lo = config_value("gspo", config, "clip_low_threshold")
    hi = config_value("gspo", config, "clip_high_threshold")
    datum = inputs[DATUM_KEY].long().flatten()
    marked = inputs["sequence_ratio_mask"] != 0
    detached = logprobs_B_T.detach()
    # where, not multiply: an unmarked position's -inf logprob must not turn the sum into NaN
    log_ratio = torch.where(marked, detached - inputs["logprobs"], 0.0).flatten()
    slots = int(datum.max()) + 1
    sums = torch.zeros(slots, dtype=detached.dtype, device=detached.device)
    sums.index_add_(0, datum, log_ratio)
    counts = torch.zeros_like(sums).index_add_(0, datum, marked.flatten().to(sums.dtype))
    mean_B_T = (sums / counts.clamp(min=1.0))[datum].view_as(logprobs_B_T)
    ratio = torch.exp(mean_B_T + logprobs_B_T - detached)
    advantages = inputs["advantages"]
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, lo, hi) * advantages)


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "importance_sampling": importance_sampling,
    "ppo": ppo,
    "cispo": cispo,
    "dro": dro,
    "gspo": gspo,
}
