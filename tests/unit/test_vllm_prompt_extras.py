"""The vLLM plugin behind target_prompt_logprobs and prompt_alt_tokens_k: extra columns after
vLLM's own top-k, computed by vLLM's own ``Sampler.gather_logprobs`` once installed. Through a
real engine and the SDK: tests/integration/test_sdk_sampling.py."""

from __future__ import annotations

import torch

from tinsmith.actors import vllm_prompt_extras as extras_mod
from tinsmith.actors.vllm_prompt_extras import PromptExtras, extra_columns


def _extras(**kw: object) -> PromptExtras:
    base: PromptExtras = {"topk": 2, "targets": [], "alt": 0, "temperature": 1.0, "seed": 3}
    return {**base, **kw}  # type: ignore[typeddict-item]


def test_targets_and_draws_come_after_vllms_own_columns() -> None:
    from vllm.v1.sample.sampler import Sampler

    extras_mod.install()
    torch.manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(4, 50), dim=-1)
    prompt = torch.tensor([7, 8, 9, 10], dtype=torch.int64)
    plain = Sampler.gather_logprobs(logprobs, 2, prompt)
    targets = [[5, -1], [6, 7], [8, 9], [1, 2], [3, 4]]  # rows 1..4 serve a later chunk
    token = extras_mod._CURRENT.set((_extras(targets=targets, alt=3), 1))
    try:
        out = Sampler.gather_logprobs(logprobs, 7, prompt)
    finally:
        extras_mod._CURRENT.reset(token)
    assert out.logprob_token_ids.shape == (4, 1 + 2 + 2 + 3)
    assert torch.equal(out.logprob_token_ids[:, :3], plain.logprob_token_ids)
    assert torch.equal(out.logprobs[:, :3], plain.logprobs)
    assert out.logprob_token_ids[:, 3:5].tolist() == [[6, 7], [8, 9], [1, 2], [3, 4]]
    rows = torch.arange(4)
    for col, ids in ((3, [6, 8, 1, 3]), (4, [7, 9, 2, 4])):
        assert torch.allclose(out.logprobs[:, col], logprobs[rows, torch.tensor(ids)])
    draws = out.logprob_token_ids[:, 5:].long()
    assert torch.allclose(out.logprobs[:, 5:], logprobs.gather(-1, draws))


def test_unasked_targets_score_zero_and_greedy_draws_are_the_argmax() -> None:
    logprobs = torch.log_softmax(torch.randn(3, 20), dim=-1)
    ids, values = extra_columns(
        logprobs, _extras(targets=[[-1], [4], [-1]], alt=2, temperature=0.0), 0
    )
    assert ids[:, 0].tolist() == [0, 4, 0] and values[0, 0] == 0.0 and values[2, 0] == 0.0
    assert ids[:, 1:].tolist() == [[int(a)] * 2 for a in logprobs.argmax(-1)]


def test_seeded_draws_repeat() -> None:
    logprobs = torch.log_softmax(torch.randn(5, 30), dim=-1)
    first = extra_columns(logprobs, _extras(alt=4, seed=9), 0)[0]
    assert torch.equal(first, extra_columns(logprobs, _extras(alt=4, seed=9), 0)[0])
