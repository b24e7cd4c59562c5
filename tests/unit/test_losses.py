"""Each Tinker loss against its closed-form gradient, on random inputs with mixed-sign advantages.

d loss / d tp (tp = learner target logprob, sp = sampler logprob, A = advantage, r = exp(tp - sp)):
  cross_entropy       -w
  importance_sampling -r A
  ppo                 -r A where the unclipped term is the minimum, else 0
  cispo               -clip(r, lo, hi) A            (the clipped ratio is a constant)
  dro                 -(A - beta (tp - sp))
gspo's sequence ratio couples a datum's tokens: it is checked against a transcription of Tinker's
documented implementation, one datum at a time, and autograd through that.
"""

from __future__ import annotations

import pytest
import torch

from tinsmith.actors.loss_specs import DATUM_KEY, validate_loss_config
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
        ("gspo", {"clip_low_threshold": 1.01}, "clip thresholds"),
        ("stable_reinforce", {}, "'stable_reinforce' is not implemented"),
        ("cross_entropy", {"beta": 1.0}, "allowed: none"),
    ],
)
def test_bad_loss_configs_are_named(loss: str, config: dict[str, float | str], needle: str) -> None:
    with pytest.raises(UserInputError) as info:
        validate_loss_config(loss, config)
    assert needle in str(info.value)


def _gspo_documented(
    target_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    sequence_ratio_mask: torch.Tensor,
    lo: float,
    hi: float,
) -> torch.Tensor:
    """One datum's GSPO loss, transcribed from Tinker's loss documentation."""
    in_ratio = sequence_ratio_mask != 0
    log_ratio = (target_logprobs.detach() - ref_logprobs)[in_ratio].mean()
    ratio = torch.exp(log_ratio + target_logprobs - target_logprobs.detach())
    clipped_ratio = torch.clamp(ratio, lo, hi)
    return -torch.minimum(ratio * advantages, clipped_ratio * advantages).sum()


@pytest.mark.parametrize(("lo", "hi"), [(0.8, 1.2), (0.95, 1.05)])
def test_gspo_matches_the_documented_formula_per_datum_in_packed_and_padded_rows(
    lo: float, hi: float
) -> None:
    """Row 0 packs datums 1 (7 tokens) and 2 (5), row 1 holds datum 3 (6) and 6 positions of
    padding; each mask marks only part of its datum; advantages of both signs; datums' sequence
    ratios on both sides of the clip range."""
    g = torch.Generator().manual_seed(3)
    lengths, shifts = (7, 5, 6), (0.6, -0.5, 0.0)  # mean log-ratio per datum, roughly
    places = [(0, 0), (0, 7), (1, 0)]
    tps, sps, advs, masks = [], [], [], []
    for n, shift in zip(lengths, shifts, strict=True):
        tp = -torch.rand(n, generator=g, dtype=torch.float64) * 3
        tps.append(tp)
        sps.append(tp - shift + 0.05 * torch.randn(n, generator=g, dtype=torch.float64))
        advs.append(torch.randn(n, generator=g, dtype=torch.float64))
        mask = torch.zeros(n, dtype=torch.float64)
        mask[2:] = 1.0  # the "prompt" tokens do not count
        masks.append(mask)
    tp_B_T = torch.zeros(2, 12, dtype=torch.float64)
    inputs = {k: torch.zeros(2, 12, dtype=torch.float64) for k in ("logprobs", "advantages")}
    inputs["sequence_ratio_mask"] = torch.zeros(2, 12, dtype=torch.float64)
    inputs[DATUM_KEY] = torch.zeros(2, 12, dtype=torch.float64)
    for i, (row, start) in enumerate(places):
        span = slice(start, start + lengths[i])
        tp_B_T[row, span] = tps[i]
        inputs["logprobs"][row, span] = sps[i]
        inputs["advantages"][row, span] = advs[i]
        inputs["sequence_ratio_mask"][row, span] = masks[i]
        inputs[DATUM_KEY][row, span] = float(i + 1)
    tp_B_T[1, 6:] = float("-inf")  # padding's logprobs may be anything: the trainer masks them
    config = validate_loss_config("gspo", {"clip_low_threshold": lo, "clip_high_threshold": hi})
    tp_B_T.requires_grad_(True)
    loss_B_T = LOSSES["gspo"](tp_B_T, inputs, config)
    real = inputs[DATUM_KEY] > 0
    torch.where(real, loss_B_T, 0.0).sum().backward()
    assert tp_B_T.grad is not None

    ratios = []
    for i, (row, start) in enumerate(places):
        leaf = tps[i].clone().requires_grad_(True)
        expected = _gspo_documented(leaf, sps[i], advs[i], masks[i], lo, hi)
        expected.backward()
        span = slice(start, start + lengths[i])
        torch.testing.assert_close(loss_B_T[row, span].sum(), expected.detach())
        torch.testing.assert_close(tp_B_T.grad[row, span], leaf.grad)
        ratios.append(float(torch.exp((tps[i] - sps[i])[2:].mean())))
    assert ratios[0] > hi and ratios[1] < lo and lo < ratios[2] < hi, ratios  # both sides
    assert bool((tp_B_T.grad[real] == 0).any()) and bool((tp_B_T.grad[real] != 0).any())


def test_gspo_needs_a_mask_that_marks_a_token() -> None:
    from tinsmith.actors.batching import to_token_datums
    from tinsmith.types.data import Datum

    def gspo_datum(mask: list[float]) -> Datum:
        return Datum.model_validate(
            {
                "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
                "loss_fn_inputs": {
                    key: {"data": values, "dtype": dtype, "shape": [3]}
                    for key, values, dtype in (
                        ("target_tokens", [2, 3, 4], "int64"),
                        ("logprobs", [-1.0, -1.0, -1.0], "float32"),
                        ("advantages", [1.0, 1.0, 1.0], "float32"),
                        ("sequence_ratio_mask", mask, "float32"),
                    )
                },
            }
        )

    assert to_token_datums([gspo_datum([0, 1, 1])], "gspo", 100, 10)[0].extra[
        "sequence_ratio_mask"
    ] == [0.0, 1.0, 1.0]
    with pytest.raises(UserInputError, match=r"data\[1\].*'sequence_ratio_mask'.* marks no token"):
        to_token_datums([gspo_datum([1, 0, 0]), gspo_datum([0, 0, 0])], "gspo", 100, 10)
