"""Each Tinker loss against its closed-form gradient, on random inputs with mixed-sign advantages.

d loss / d tp (tp = learner target logprob, sp = sampler logprob, A = advantage, r = exp(tp - sp)):
  cross_entropy       -w
  importance_sampling -r A
  ppo                 -r A where the unclipped term is the minimum, else 0
  cispo               -clip(r, lo, hi) A            (the clipped ratio is a constant)
  dro                 -(A - beta (tp - sp))
"""

from __future__ import annotations

import pytest
import torch

from tinsmith.actors.loss_specs import validate_loss_config
from tinsmith.actors.losses import LOSSES
from tinsmith.errors import UserInputError


def _inputs(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tp = -torch.rand(4, 9, generator=g, dtype=torch.float64) * 3
    # sampler logprobs within +-0.5 of tp: ratios from ~0.6 to ~1.6,
    # so clipping triggers on both sides
    sp = tp + (torch.rand(4, 9, generator=g, dtype=torch.float64) - 0.5)
    inputs = {
        "weights": torch.randn(4, 9, generator=g, dtype=torch.float64),
        "logprobs": sp,
        "advantages": torch.randn(4, 9, generator=g, dtype=torch.float64),
    }
    return tp, inputs


def _loss_and_grad(
    name: str, config: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    tp, inputs = _inputs(0)
    tp.requires_grad_(True)
    loss = LOSSES[name](tp, inputs, dict(config)).sum()
    loss.backward()
    assert tp.grad is not None
    return tp.detach(), tp.grad, inputs


def test_cross_entropy() -> None:
    tp, grad, x = _loss_and_grad("cross_entropy", {})
    torch.testing.assert_close(grad, -x["weights"])
    torch.testing.assert_close(LOSSES["cross_entropy"](tp, x, {}).sum(), (-tp * x["weights"]).sum())


def test_importance_sampling() -> None:
    tp, grad, x = _loss_and_grad("importance_sampling", {})
    ratio = torch.exp(tp - x["logprobs"])
    torch.testing.assert_close(grad, -ratio * x["advantages"])


@pytest.mark.parametrize(("lo", "hi"), [(0.8, 1.2), (0.9, 1.1)])
def test_ppo_clips_on_both_sides(lo: float, hi: float) -> None:
    config = validate_loss_config("ppo", {"clip_low_threshold": lo, "clip_high_threshold": hi})
    tp, grad, x = _loss_and_grad("ppo", config)
    ratio, adv = torch.exp(tp - x["logprobs"]), x["advantages"]
    unclipped_is_min = ratio * adv <= torch.clamp(ratio, lo, hi) * adv
    expected = torch.where(unclipped_is_min, -ratio * adv, torch.zeros_like(adv))
    # inside the clip range both terms are equal and the gradient is -r A
    inside = (ratio >= lo) & (ratio <= hi)
    expected = torch.where(inside, -ratio * adv, expected)
    torch.testing.assert_close(grad, expected)
    assert bool(((ratio > hi) & (adv > 0)).any()) and bool(((ratio < lo) & (adv < 0)).any())
    assert bool((grad == 0).any()), "clipping never removed a gradient"
    loss = -torch.minimum(ratio * adv, torch.clamp(ratio, lo, hi) * adv).sum()
    torch.testing.assert_close(LOSSES["ppo"](tp, x, config).sum(), loss)


def test_cispo() -> None:
    config = validate_loss_config("cispo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
    tp, grad, x = _loss_and_grad("cispo", config)
    ratio = torch.exp(tp - x["logprobs"])
    torch.testing.assert_close(grad, -torch.clamp(ratio, 0.9, 1.1) * x["advantages"])


def test_dro() -> None:
    config = validate_loss_config("dro", {"beta": 0.3})
    tp, grad, x = _loss_and_grad("dro", config)
    torch.testing.assert_close(grad, -(x["advantages"] - 0.3 * (tp - x["logprobs"])))


@pytest.mark.parametrize(
    ("loss", "config", "needle"),
    [
        ("ppo", {"clip_low_threshold": 1.5}, "clip thresholds"),
        ("ppo", {"epsilon": 0.2}, "['epsilon'] are not accepted by ppo"),
        ("dro", {"beta": -1.0}, "beta"),
        ("gspo", {}, "'gspo' is not implemented"),
        ("cross_entropy", {"beta": 1.0}, "allowed: none"),
    ],
)
def test_bad_loss_configs_are_named(loss: str, config: dict[str, float | str], needle: str) -> None:
    with pytest.raises(UserInputError) as info:
        validate_loss_config(loss, config)
    assert needle in str(info.value)
