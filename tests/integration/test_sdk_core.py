"""The end-to-end core through the official tinker SDK against a real tinsmith server.

Real components only: `tinsmith serve` (Ray, DeepSpeed trainer ranks, a vLLM sampler) started
once per session by the `server` fixture, driven over HTTP by tinker==0.38.0.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, ONE_BATCH_MODEL, ZERO3_MODEL
from tests.integration.helpers import (
    checkpoint_dir,
    datum,
    expect_user_error,
    local_model_dir,
    random_tokens,
    read_adapter,
)

pytestmark = pytest.mark.integration

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Ray actors split training and sampling across the machines of a cluster.",
    "A small language model can still memorise a short sentence quickly.",
]


def _tokenizer(tc: tinker.TrainingClient) -> object:
    return tc.get_tokenizer()


def test_training_lowers_loss_and_first_logprobs_match_reference(
    service_client: tinker.ServiceClient,
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    tok = _tokenizer(tc)
    data = [datum(tok.encode(s)) for s in SENTENCES]  # type: ignore[attr-defined]
    # forward (forward_only) gives the same logprobs as forward_backward and changes nothing.
    forward_logprobs = [
        o["logprobs"].tolist() for o in tc.forward(data, "cross_entropy").result().loss_fn_outputs
    ]
    losses: list[float] = []
    first_logprobs: list[list[float]] = []
    for step in range(5):
        fb = tc.forward_backward(data, "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        losses.append(fb.metrics["loss:sum"])
        if step == 0:
            first_logprobs = [out["logprobs"].tolist() for out in fb.loss_fn_outputs]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    for got, fwd in zip(first_logprobs, forward_logprobs, strict=True):
        np.testing.assert_allclose(got, fwd, atol=1e-5, rtol=0)

    # In-process reference at the same weights: the base model plus a fresh LoRA (B = 0).
    model = AutoModelForCausalLM.from_pretrained(
        local_model_dir(DEFAULT_MODEL), dtype=torch.float32
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]
        ),
    )
    with torch.no_grad():
        for d, got in zip(data, first_logprobs, strict=True):
            ids = torch.tensor([d.model_input.to_ints()])
            targets = torch.tensor([d.loss_fn_inputs["target_tokens"].tolist()])
            logits = model(input_ids=ids).logits.float()
            ref = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)[0]
            np.testing.assert_allclose(np.array(got), ref.numpy(), atol=1e-4, rtol=0)


def test_memorised_sequence_is_sampled_back_greedily(service_client: tinker.ServiceClient) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    tok = _tokenizer(tc)
    tokens = tok.encode("Tinsmith serves Tinker on Ray: zebra quartz maple 42.")  # type: ignore[attr-defined]
    d = datum(tokens)
    loss = float("inf")
    for _ in range(40):
        loss = tc.forward_backward([d], "cross_entropy").result().metrics["loss:sum"]
        tc.optim_step(types.AdamParams(learning_rate=3e-3)).result()
        if loss < 0.05:
            break
    assert loss < 0.5, loss
    prompt = types.ModelInput.from_ints(tokens[:3])
    expected = tokens[3:]
    params = types.SamplingParams(max_tokens=len(expected), temperature=0.0)

    ephemeral = tc.save_weights_and_get_sampling_client().result()
    path = tc.save_weights_for_sampler("memorised").result().path
    assert path.startswith("tinker://") and path.endswith("/sampler_weights/memorised")
    named = service_client.create_sampling_client(model_path=path).result()
    for client in (ephemeral, named):
        seq = client.sample(prompt, num_samples=1, sampling_params=params).result().sequences[0]
        assert seq.tokens == expected
        assert seq.logprobs is not None and len(seq.logprobs) == len(expected)
        assert all(lp <= 0.0 for lp in seq.logprobs)


def _train(tc: tinker.TrainingClient, data: list[types.Datum], steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        losses.append(tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"])
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    return losses


def test_two_zero3_ranks_match_one_rank(
    service_client: tinker.ServiceClient, server: object
) -> None:
    data = [datum(random_tokens(seed, length)) for seed, length in enumerate([40, 64, 33, 57])]
    one = service_client.create_lora_training_client(base_model=ONE_BATCH_MODEL, rank=8).result()
    two = service_client.create_lora_training_client(base_model=ZERO3_MODEL, rank=8).result()
    losses_one = _train(one, data, 2)  # the second step's loss shows the first update
    losses_two = _train(two, data, 2)
    print("1 rank:", losses_one, "2 ranks:", losses_two)
    # fp32 sums of ~190 token losses, grouped differently on two ranks: relative 1e-6
    np.testing.assert_allclose(losses_two, losses_one, atol=0, rtol=1e-6)
    a = read_adapter(checkpoint_dir(server, one.save_weights_for_sampler("z1").result().path))  # type: ignore[attr-defined]
    b = read_adapter(checkpoint_dir(server, two.save_weights_for_sampler("z2").result().path))  # type: ignore[attr-defined]
    # AdamW normalises each element's step, so an element whose gradient is at fp32 rounding level
    # moves by up to a whole step (lr 1e-3) either way, set by the summation order, which two ranks
    # change: all but 0.1% of the elements agree within 1e-5, none by more than the 2 steps' reach.
    assert sorted(a) == sorted(b)
    differences = np.concatenate([np.abs(b[key] - a[key]).ravel() for key in a])
    assert (differences > 1e-5).mean() <= 1e-3, (differences > 1e-5).mean()
    assert differences.max() <= 2 * 2 * 1e-3, differences.max()


def test_batch_over_token_budget_matches_one_micro_batch(
    service_client: tinker.ServiceClient, server: object
) -> None:
    # 4 datums of ~300 tokens: ~1200 padded tokens against the default model's 1024-token budget.
    data = [datum(random_tokens(100 + i, 280 + 9 * i)) for i in range(4)]
    split = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    whole = service_client.create_lora_training_client(base_model=ONE_BATCH_MODEL, rank=8).result()
    loss_split = split.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
    loss_whole = whole.forward_backward(data, "cross_entropy").result().metrics["loss:sum"]
    # Adam's first step moves an element by lr * g / (|g| + eps): with Tinker's default eps (1e-12)
    # a gradient at fp32 rounding level, whose sign the micro-batch split may flip, moves a whole
    # lr either way. With eps = 1e-3 the step is lr/eps-Lipschitz in g, so a gradient difference
    # of d moves an element by at most d (lr = eps): the bound below holds for any |d| <= 1e-5,
    # far above the rounding of ~1200 summed fp32 terms.
    adam = types.AdamParams(learning_rate=1e-3, eps=1e-3)
    split.optim_step(adam).result()
    whole.optim_step(adam).result()
    # Tolerance: fp32 sums over ~1200 tokens in a different grouping (relative 1e-6).
    assert abs(loss_split - loss_whole) <= 1e-6 * abs(loss_whole) + 1e-4, (loss_split, loss_whole)
    a = read_adapter(checkpoint_dir(server, split.save_weights_for_sampler("s").result().path))  # type: ignore[attr-defined]
    b = read_adapter(checkpoint_dir(server, whole.save_weights_for_sampler("w").result().path))  # type: ignore[attr-defined]
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0, err_msg=key)


def test_bad_input_fails_with_user_error_and_server_keeps_serving(
    service_client: tinker.ServiceClient,
) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    good = datum([1, 2, 3, 4, 5, 6])
    out_of_vocab = datum([1, 2, 49152 + 7, 4])
    expect_user_error(
        tc.forward_backward([out_of_vocab], "cross_entropy"), "outside the vocabulary", "49159"
    )
    short_targets = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0, 1.0]},
    )
    expect_user_error(
        tc.forward_backward([short_targets], "cross_entropy"), "target_tokens", "length 3"
    )
    short_weights = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
        loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0, 1.0]},
    )
    expect_user_error(tc.forward_backward([short_weights], "cross_entropy"), "weights", "length 2")
    expect_user_error(tc.forward_backward([good], "not_a_loss"), "not_a_loss")  # type: ignore[arg-type]
    with pytest.raises(tinker.RequestFailedError) as info:
        service_client.create_lora_training_client(
            base_model="nobody/no-such-model", rank=4
        ).result()
    assert "nobody/no-such-model" in info.value.message
    with pytest.raises(tinker.RequestFailedError) as info:
        service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=128).result()
    assert "lora_config.rank 128" in info.value.message
    # Over limits.max_tokens_per_request (2^20): refused with a 413 before it is queued, and its
    # seq_id is still consumed, so the client's next requests do not wait for it.
    too_long = datum(list(range(1, (1 << 20) + 3)))  # 2^20 + 1 input tokens
    with pytest.raises(tinker.APIStatusError) as refused:
        tc.forward_backward([too_long], "cross_entropy").result()
    assert refused.value.status_code == 413 and "max_tokens_per_request" in str(refused.value)
    # The same client (its seq_ids intact) and the server keep working.
    fb = tc.forward_backward([good], "cross_entropy").result()
    assert fb.metrics["loss:sum"] > 0
    tc.optim_step(types.AdamParams()).result()
