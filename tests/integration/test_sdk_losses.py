"""Tinker's RL losses, custom losses, multi-tenancy and bad loss inputs through the official SDK."""

from __future__ import annotations

import numpy as np
import pytest
import tinker
import torch
from tinker import types

from tests.conftest import DEFAULT_MODEL
from tests.integration.helpers import (
    checkpoint_dir,
    datum,
    expect_user_error,
    model_status,
    random_tokens,
    read_adapter,
)

pytestmark = pytest.mark.integration


def _rl_datum(
    tokens: list[int], sampler_logprobs: list[float], advantages: list[float]
) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "logprobs": sampler_logprobs,
            "advantages": advantages,
        },
    )


def _formula(
    name: str, tp: np.ndarray, sp: np.ndarray, adv: np.ndarray, cfg: dict[str, float]
) -> float:
    r = np.exp(tp - sp)
    if name == "importance_sampling":
        return float(-(r * adv).sum())
    if name == "ppo":
        return float(-np.minimum(r * adv, np.clip(r, cfg["lo"], cfg["hi"]) * adv).sum())
    if name == "cispo":
        return float(-(np.clip(r, cfg["lo"], cfg["hi"]) * tp * adv).sum())
    return float(-(tp * adv - 0.5 * cfg["beta"] * (tp - sp) ** 2).sum())


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("importance_sampling", None),
        ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        ("cispo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        ("dro", {"beta": 0.2}),
    ],
)
def test_rl_loss_sum_matches_formula(
    service_client: tinker.ServiceClient, loss_fn: str, config: dict[str, float] | None
) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    tokens = random_tokens(7, 33)
    probe = datum(tokens)
    tp = np.array(
        tc.forward([probe], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    )
    rng = np.random.default_rng(1)
    sp = (tp + rng.uniform(-0.4, 0.4, size=tp.shape)).astype(
        np.float32
    )  # ratios ~0.67..1.5: clipping both ways
    adv = rng.normal(size=tp.shape).astype(np.float32)
    out = tc.forward_backward(
        [_rl_datum(tokens, sp.tolist(), adv.tolist())], loss_fn, config
    ).result()  # type: ignore[arg-type]
    got_tp = np.array(out.loss_fn_outputs[0]["logprobs"].tolist())
    np.testing.assert_allclose(got_tp, tp, atol=1e-5)
    cfg = {"lo": 0.9, "hi": 1.1, "beta": 0.2}
    expected = _formula(loss_fn, got_tp, sp.astype(np.float64), adv.astype(np.float64), cfg)
    assert abs(out.metrics["loss:sum"] - expected) <= 1e-4 * max(1.0, abs(expected)), (
        out.metrics,
        expected,
    )


def test_gspo_loss_sum_matches_the_documented_formula_per_datum(
    service_client: tinker.ServiceClient,
) -> None:
    """Two datums in one request (the trainer packs them into one row): each one's sequence
    ratio is the mean log-ratio over the tokens its sequence_ratio_mask marks (not the first 6,
    the "prompt"), one datum's above the clip range and one's below; loss:sum equals Tinker's
    formula on the logprobs the trainer returns. Gradients: tests/unit/test_losses.py."""
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    seqs = [random_tokens(31, 25), random_tokens(32, 18)]
    tps = [
        np.array(out["logprobs"].tolist())
        for out in tc.forward([datum(t) for t in seqs], "cross_entropy").result().loss_fn_outputs
    ]
    rng = np.random.default_rng(2)
    data, expected = [], 0.0
    for tokens, tp, shift in zip(seqs, tps, (0.5, -0.5), strict=True):
        sp = (tp - shift + rng.uniform(-0.1, 0.1, size=tp.shape)).astype(np.float32)
        adv = rng.normal(size=tp.shape).astype(np.float32)
        mask = np.ones_like(tp, dtype=np.float32)
        mask[:6] = 0.0
        rl = _rl_datum(tokens, sp.tolist(), adv.tolist())
        rl.loss_fn_inputs["sequence_ratio_mask"] = types.TensorData.from_numpy(mask)
        data.append(rl)
        ratio = np.exp((tp - sp)[mask > 0].mean())
        expected += float(-np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).sum())
    out = tc.forward_backward(data, "gspo").result()
    assert abs(out.metrics["loss:sum"] - expected) <= 1e-4 * max(1.0, abs(expected)), (
        out.metrics,
        expected,
    )
    # a mask that marks nothing has no mean: a user error naming the datum and the field
    data[1].loss_fn_inputs["sequence_ratio_mask"] = types.TensorData.from_numpy(
        np.zeros(17, dtype=np.float32)
    )
    expect_user_error(tc.forward_backward(data, "gspo"), "data[1]", "sequence_ratio_mask")


def test_forward_backward_custom_dpo(service_client: tinker.ServiceClient) -> None:
    """A DPO loss on (chosen, rejected) pairs: the preference margin grows with training."""
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    tok = tc.get_tokenizer()
    prompt = tok.encode("Question: what colour is the sky? Answer:")  # type: ignore[attr-defined]
    chosen = prompt + tok.encode(" blue, on a clear day.")  # type: ignore[attr-defined]
    rejected = prompt + tok.encode(" green with purple dots.")  # type: ignore[attr-defined]

    def completion_datum(tokens: list[int]) -> types.Datum:
        weights = [0.0] * (len(prompt) - 1) + [1.0] * (len(tokens) - len(prompt))
        return datum(tokens, weights)

    data = [completion_datum(chosen), completion_datum(rejected)]
    ref = [
        np.array(o["logprobs"].tolist())
        for o in tc.forward(data, "cross_entropy").result().loss_fn_outputs
    ]
    masks = [np.array(d.loss_fn_inputs["weights"].tolist()) for d in data]
    ref_c, ref_r = (float((lp * m).sum()) for lp, m in zip(ref, masks, strict=True))
    beta = 0.1

    def dpo(
        batch: list[types.Datum], logprobs: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = [torch.tensor(d.loss_fn_inputs["weights"].tolist()) for d in batch]
        chosen_lp, rejected_lp = (lp @ wi for lp, wi in zip(logprobs, w, strict=True))
        margin = beta * ((chosen_lp - ref_c) - (rejected_lp - ref_r))
        loss = -torch.nn.functional.logsigmoid(margin)
        return loss, {"margin": float(margin)}

    margins = []
    for _ in range(4):
        out = tc.forward_backward_custom(data, dpo).result()
        margins.append(out.metrics["margin"])
        assert "loss:sum" in out.metrics
        tc.optim_step(types.AdamParams(learning_rate=2e-3)).result()
    assert margins[-1] > margins[0] + 0.05, margins


def test_interleaved_tenants_match_training_alone(
    service_client: tinker.ServiceClient, server: object
) -> None:
    specs = [
        {"rank": 4},
        {"rank": 8},
        {"rank": 16, "train_attn": False, "train_unembed": False},  # MLP only
    ]
    data = [
        [datum(random_tokens(50 + 10 * i + j, 24 + 8 * j)) for j in range(2)]
        for i in range(len(specs))
    ]

    def make(spec: dict[str, object]) -> tinker.TrainingClient:
        return service_client.create_lora_training_client(base_model=DEFAULT_MODEL, **spec).result()  # type: ignore[arg-type]

    def step(tc: tinker.TrainingClient, batch: list[types.Datum]) -> None:
        tc.forward_backward(batch, "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-3, weight_decay=0.01)).result()

    # Warm the rank up first (allocator arenas, activation buffers), so the
    # figure below is the tenants' own.
    warm = make({"rank": 16})
    for batch in data:
        step(warm, batch)
    before = _trainer_status(server)
    together = [make(s) for s in specs]
    for _ in range(2):  # the second step reads each tenant's own AdamW moments
        for tc, batch in zip(together, data, strict=True):
            step(tc, batch)
    after = _trainer_status(server)
    grown = after["rss_bytes"] - before["rss_bytes"]
    state = after["adapter_param_bytes"] - before["adapter_param_bytes"]
    print(
        f"trainer rank RSS grew {grown / 2**20:.1f} MiB for 3 tenants "
        f"(adapters+optimizer {state / 2**20:.1f} MiB)"
    )
    # far less than one more copy of the 135M-parameter base model (~540 MB in fp32)
    assert grown < 300 * 2**20, grown
    for i, (spec, batch) in enumerate(zip(specs, data, strict=True)):
        alone = make(spec)
        for _ in range(2):
            step(alone, batch)
        a = read_adapter(
            checkpoint_dir(server, together[i].save_weights_for_sampler(f"mt{i}").result().path)
        )
        b = read_adapter(
            checkpoint_dir(server, alone.save_weights_for_sampler(f"alone{i}").result().path)
        )
        assert a.keys() == b.keys()
        if spec.get("train_attn") is False:
            assert not any("q_proj" in k or "lm_head" in k for k in a)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-6, rtol=0, err_msg=key)


def _trainer_status(server: object) -> dict[str, int]:
    workers = model_status(server, DEFAULT_MODEL)["workers"]
    return next(w for w in workers if w["kind"] == "trainer")  # type: ignore[attr-defined, no-any-return]


def test_bad_loss_inputs_are_user_errors(service_client: tinker.ServiceClient) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    tokens = [5, 6, 7, 8, 9]
    expect_user_error(tc.optim_step(types.AdamParams()), "without gradients")
    nan_adv = _rl_datum(tokens, [-1.0] * 4, [1.0, float("nan"), 0.0, 1.0])
    expect_user_error(tc.forward_backward([nan_adv], "importance_sampling"), "advantages", "NaN")
    inf_w = datum(tokens, [1.0, float("inf"), 1.0, 1.0])
    expect_user_error(tc.forward_backward([inf_w], "cross_entropy"), "weights", "NaN or infinity")
    missing = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "advantages": [1.0] * 4},
    )
    expect_user_error(tc.forward_backward([missing], "ppo"), "missing 'logprobs'")
    float_targets = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=[6.0, 7.0, 8.0, 9.0], dtype="float32", shape=[4])
        },
    )
    expect_user_error(
        tc.forward_backward([float_targets], "cross_entropy"), "target_tokens", "dtype float32"
    )
    two_d = datum(tokens)
    two_d.loss_fn_inputs["weights"] = types.TensorData(
        data=[1.0] * 4, dtype="float32", shape=[2, 2]
    )
    expect_user_error(tc.forward_backward([two_d], "cross_entropy"), "shape [2, 2]")
    expect_user_error(
        tc.forward_backward([datum(tokens)], "stable_reinforce"), "'stable_reinforce' is not"
    )
    expect_user_error(tc.forward_backward([datum(tokens)], "gspo"), "missing 'logprobs'")
    rl = _rl_datum(tokens, [-1.0] * 4, [1.0] * 4)
    expect_user_error(
        tc.forward_backward([rl], "ppo", {"clip_low_threshold": 2.0}), "clip thresholds"
    )
    expect_user_error(tc.forward_backward([rl], "ppo", {"epsilon": 0.2}), "'epsilon'")
    # nothing above touched the adapter: the next valid step works and is the first one
    fb = tc.forward_backward([datum(tokens)], "cross_entropy").result()
    assert fb.metrics["loss:sum"] > 0
    tc.optim_step(types.AdamParams()).result()
