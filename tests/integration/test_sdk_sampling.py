"""Sampling through the official SDK: every SamplingParams field, logprobs that agree with the
trainer, immutable weight snapshots and inflight samplers that follow their training client,
many adapters at once, and bad sampling requests."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL
from tests.integration.helpers import datum, expect_user_error, random_tokens

pytestmark = pytest.mark.integration


def _tokenizer(service_client: tinker.ServiceClient) -> object:
    from transformers import AutoTokenizer

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=1).result()
    return AutoTokenizer.from_pretrained(tc.get_info().model_data.tokenizer_id)


def _tokens(client: tinker.SamplingClient, prompt: types.ModelInput, **params: object) -> list[int]:
    return list(
        client.sample(prompt, 1, types.SamplingParams(**params)).result().sequences[0].tokens
    )  # type: ignore[arg-type]


def test_every_sampling_param_has_its_effect(service_client: tinker.ServiceClient) -> None:
    tok = _tokenizer(service_client)
    base = service_client.create_sampling_client(base_model=DEFAULT_MODEL).result()
    prompt = types.ModelInput.from_ints(
        tok.encode("Once upon a time, in a small village by the sea,")
    )  # type: ignore[attr-defined]

    # max_tokens: exactly that many, stop_reason "length"; temperature 0 is greedy (repeatable).
    greedy = (
        base.sample(prompt, 1, types.SamplingParams(max_tokens=24, temperature=0.0))
        .result()
        .sequences[0]
    )
    assert len(greedy.tokens) == 24 and greedy.stop_reason == "length"
    assert _tokens(base, prompt, max_tokens=24, temperature=0.0) == list(greedy.tokens)

    # A stop string truncates the completion there and gives stop_reason "stop".
    text = tok.decode(greedy.tokens)  # type: ignore[attr-defined]
    stop_text = tok.decode(greedy.tokens[8:10]).strip()  # type: ignore[attr-defined]
    assert stop_text and stop_text in text
    stopped = base.sample(
        prompt, 1, types.SamplingParams(max_tokens=24, temperature=0.0, stop=[stop_text])
    ).result()
    seq = stopped.sequences[0]
    assert seq.stop_reason == "stop" and len(seq.tokens) <= 10
    assert stop_text not in tok.decode(seq.tokens[: max(0, len(seq.tokens) - 2)])  # type: ignore[attr-defined]
    # A stop token id ends the completion with that token.
    stop_id = greedy.tokens[5]
    first = list(greedy.tokens).index(stop_id)
    by_id = base.sample(
        prompt, 1, types.SamplingParams(max_tokens=24, temperature=0.0, stop=[stop_id])
    ).result()
    assert by_id.sequences[0].stop_reason == "stop"
    assert list(by_id.sequences[0].tokens) == list(greedy.tokens[: first + 1])

    # seed: the same seed repeats, different seeds differ.
    a = _tokens(base, prompt, max_tokens=16, temperature=1.0, seed=123)
    assert a == _tokens(base, prompt, max_tokens=16, temperature=1.0, seed=123)
    assert a != _tokens(base, prompt, max_tokens=16, temperature=1.0, seed=124)
    # top_k=1 and a tiny top_p both reduce sampling at temperature 1 to greedy.
    assert _tokens(base, prompt, max_tokens=24, temperature=1.0, top_k=1, seed=7) == list(
        greedy.tokens
    )
    assert _tokens(base, prompt, max_tokens=24, temperature=1.0, top_p=1e-6, seed=7) == list(
        greedy.tokens
    )
    # num_samples: that many sequences; greedy ones are identical, sampled ones differ.
    many = (
        base.sample(prompt, 4, types.SamplingParams(max_tokens=12, temperature=1.0, seed=5))
        .result()
        .sequences
    )
    assert len(many) == 4 and len({tuple(s.tokens) for s in many}) > 1
    twins = (
        base.sample(prompt, 2, types.SamplingParams(max_tokens=12, temperature=0.0))
        .result()
        .sequences
    )
    assert len(twins) == 2 and twins[0].tokens == twins[1].tokens == greedy.tokens[:12]


def test_logprobs_agree_with_compute_logprobs_and_the_trainer(
    service_client: tinker.ServiceClient,
) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    info = tc.get_info()  # the family, and the tokenizer by the model's public name
    assert info.model_data.arch == "llama" and info.model_data.tokenizer_id == DEFAULT_MODEL, info
    for i in range(2):
        tc.forward_backward([datum(random_tokens(5000 + i, 30))], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=2e-3)).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt_tokens = random_tokens(5100, 10)
    prompt = types.ModelInput.from_ints(prompt_tokens)
    out = sampler.sample(
        prompt,
        1,
        types.SamplingParams(max_tokens=12, temperature=1.0, seed=3),
        topk_sample_logprobs=20,
    ).result()
    seq = out.sequences[0]
    assert seq.logprobs is not None and len(seq.logprobs) == len(seq.tokens)
    full = prompt_tokens + list(seq.tokens)
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(full)).result()
    assert scored[0] is None and len(scored) == len(full)
    np.testing.assert_allclose(
        seq.logprobs, np.array(scored[len(prompt_tokens) :], dtype=float), atol=1e-3
    )

    # The trainer's forward (same weights) scores the same sequence the same way.
    fwd = tc.forward([datum(full)], "cross_entropy").result()
    trainer_lps = np.array(fwd.loss_fn_outputs[0]["logprobs"].tolist())
    np.testing.assert_allclose(trainer_lps, np.array(scored[1:], dtype=float), atol=1e-3)

    # Top-k logprobs: k=20 per sampled token, sorted, and the sampled
    # token's logprob among them when ranked.
    assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
    for row, (token, lp) in zip(
        seq.topk_logprobs, zip(seq.tokens, seq.logprobs, strict=True), strict=True
    ):
        assert len(row) == 20
        values = [v for _, v in row]
        assert values == sorted(values, reverse=True) and lp <= values[0] + 1e-4
        if token in dict(row):
            assert dict(row)[token] == pytest.approx(lp, abs=1e-4)
    prompt_side = sampler.sample(
        prompt,
        1,
        types.SamplingParams(max_tokens=1),
        include_prompt_logprobs=True,
        topk_prompt_logprobs=5,
    ).result()
    assert prompt_side.prompt_logprobs is not None and prompt_side.prompt_logprobs[0] is None
    np.testing.assert_allclose(
        np.array(prompt_side.prompt_logprobs[1:], dtype=float),
        np.array(scored[1 : len(prompt_tokens)], dtype=float),
        atol=1e-3,
    )
    assert prompt_side.topk_prompt_logprobs is not None
    assert prompt_side.topk_prompt_logprobs[0] is None
    assert all(len(row) == 5 for row in prompt_side.topk_prompt_logprobs[1:] if row)
    # prompt_logprobs_last_n=k: exactly the last k positions, the same values
    last = sampler.sample(
        prompt,
        1,
        types.SamplingParams(max_tokens=1),
        include_prompt_logprobs=True,
        topk_prompt_logprobs=5,
        prompt_logprobs_last_n=4,
    ).result()
    assert last.prompt_logprobs is not None and last.topk_prompt_logprobs is not None
    assert last.prompt_logprobs[:-4] == [None] * 6
    np.testing.assert_allclose(
        last.prompt_logprobs[-4:], prompt_side.prompt_logprobs[-4:], atol=1e-4
    )
    assert last.topk_prompt_logprobs[:-4] == [None] * 6
    assert [[t for t, _ in row] for row in last.topk_prompt_logprobs[-4:] if row] == [
        [t for t, _ in row] for row in prompt_side.topk_prompt_logprobs[-4:] if row
    ]
    expect_user_error(
        sampler.sample(
            prompt,
            1,
            types.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=10,
        ),
        "prompt_logprobs_last_n",
        "1..9",
    )

    # target_prompt_logprobs: any ids per position (here the prompt's own next token, each
    # position's top-1, and -1 on odd rows), equal to the trainer's and to the top-k
    top1 = [row[0][0] for row in prompt_side.topk_prompt_logprobs[1:]]  # type: ignore[index]
    n = len(prompt_tokens) - 1
    cells = [[prompt_tokens[i + 1], top1[i], -1 if i % 2 else top1[i]] for i in range(n)]
    targets = types.TensorData(data=[c for row in cells for c in row], dtype="int64", shape=[n, 3])
    scored_targets = sampler.sample(
        prompt, 1, types.SamplingParams(max_tokens=1), target_prompt_logprobs=targets
    ).result()
    got = np.array(scored_targets.target_prompt_logprobs.data).reshape(n, 3)  # type: ignore[union-attr]
    own = tc.forward([datum(prompt_tokens)], "cross_entropy").result()
    np.testing.assert_allclose(got[:, 0], own.loss_fn_outputs[0]["logprobs"].tolist(), atol=1e-3)
    top1_lps = [row[0][1] for row in prompt_side.topk_prompt_logprobs[1:]]  # type: ignore[index]
    np.testing.assert_allclose(got[:, 1], top1_lps, atol=1e-4)
    assert all(got[i, 2] == 0.0 for i in range(1, n, 2))
    # prompt_alt_tokens_k: greedy draws are each position's top-1; at temperature 1, every
    # draw's logprob is the model's logprob of that token
    greedy_alt = (
        sampler.sample(
            prompt, 1, types.SamplingParams(max_tokens=1, temperature=0.0), prompt_alt_tokens_k=2
        )
        .result()
        .prompt_alt_tokens
    )
    assert greedy_alt is not None and greedy_alt.tokens.shape == [n, 2]
    assert np.array(greedy_alt.tokens.data).reshape(n, 2)[:, 0].tolist() == top1
    np.testing.assert_allclose(
        np.array(greedy_alt.logprobs.data).reshape(n, 2)[:, 1], top1_lps, atol=1e-4
    )
    drawn = sampler.sample(
        prompt,
        1,
        types.SamplingParams(max_tokens=1, temperature=1.0, seed=11),
        prompt_alt_tokens_k=8,
        include_prompt_logprobs=True,
        topk_prompt_logprobs=20,
    ).result()
    assert drawn.prompt_alt_tokens is not None and drawn.topk_prompt_logprobs is not None
    alt_ids = np.array(drawn.prompt_alt_tokens.tokens.data).reshape(n, 8)
    alt_lps = np.array(drawn.prompt_alt_tokens.logprobs.data).reshape(n, 8)
    checked = 0
    for i in range(n):
        known = dict(drawn.topk_prompt_logprobs[i + 1] or [])
        for token, lp in zip(alt_ids[i], alt_lps[i], strict=True):
            if int(token) in known:
                assert lp == pytest.approx(known[int(token)], abs=1e-4)
                checked += 1
    assert checked >= n  # most draws land in the top 20
    expect_user_error(
        sampler.sample(
            prompt,
            1,
            types.SamplingParams(max_tokens=1),
            target_prompt_logprobs=types.TensorData(
                data=[5] * (n + 1), dtype="int64", shape=[n + 1, 1]
            ),
        ),
        "target_prompt_logprobs",
        "[9, K]",
    )


def test_samples_of_one_prompt_reuse_its_cached_prefix(
    service_client: tinker.ServiceClient,
) -> None:
    """An RL group: 8 samples of one 512-token prompt sent at once. vLLM's prefix cache (blocks of
    32 tokens on CPU) serves all but the first from the first one's KV blocks, within the same
    scheduler step, and says so in ``prompt_cache_hit_tokens``; the cached samples score their
    tokens as the uncached one does."""
    sampler = service_client.create_sampling_client(base_model=DEFAULT_MODEL).result()
    prompt = types.ModelInput.from_ints(random_tokens(5777, 512))  # in no other test
    params = types.SamplingParams(max_tokens=4, temperature=0.0)
    futures = [sampler.sample(prompt, 1, params) for _ in range(8)]
    outs = [f.result() for f in futures]
    hits = sorted(out.prompt_cache_hit_tokens for out in outs)
    assert hits == [0] + [480] * 7, hits  # 15 whole blocks; vLLM always computes the last token
    first = outs[[out.prompt_cache_hit_tokens for out in outs].index(0)].sequences[0]
    for out in outs:
        assert list(out.sequences[0].tokens) == list(first.tokens)
        np.testing.assert_allclose(out.sequences[0].logprobs, first.logprobs, atol=1e-4)


def test_snapshots_are_immutable_and_many_adapters_sample_concurrently(
    service_client: tinker.ServiceClient,
) -> None:
    prompt = types.ModelInput.from_ints(random_tokens(5200, 6))
    greedy = types.SamplingParams(max_tokens=8, temperature=0.0)
    # The base model's greedy sample and its logprobs, before this test's adapters fill the
    # sampler's LoRA slots.
    base = service_client.create_sampling_client(base_model=DEFAULT_MODEL).result()
    probe = types.ModelInput.from_ints(random_tokens(5500, 24))

    def base_sample() -> tuple[list[int], np.ndarray]:
        seq = base.sample(probe, 1, greedy).result().sequences[0]
        return list(seq.tokens), np.array(seq.logprobs, dtype=float)

    base_before = base_sample()
    clients: dict[tuple[int, int], tinker.SamplingClient] = {}
    expected: dict[tuple[int, int], list[int]] = {}
    tenants = [
        service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=r).result()
        for r in (4, 8, 16, 8)
    ]
    for t, tc in enumerate(tenants):
        target = random_tokens(5300 + t, 14)
        for version in range(2):
            for _ in range(2):
                tc.forward_backward([datum(prompt.to_ints() + target)], "cross_entropy").result()
                tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
            # Even versions ephemeral, odd ones named: both kinds are snapshots.
            if version == 0:
                client = tc.save_weights_and_get_sampling_client().result()
            else:
                path = tc.save_weights_for_sampler(f"snap-{t}").result().path
                # by either client's create_sampling_client
                creator = tc if t % 2 else service_client
                client = creator.create_sampling_client(model_path=path).result()
            clients[(t, version)] = client
            expected[(t, version)] = list(
                client.sample(prompt, 1, greedy).result().sequences[0].tokens
            )
    # The versions really differ (training moved the weights between them).
    assert sum(expected[(t, 0)] != expected[(t, 1)] for t in range(4)) >= 3
    # More training after the snapshots does not change what they sample.
    for tc in tenants:
        tc.forward_backward([datum(random_tokens(5400, 20))], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        futures = {
            key: pool.submit(lambda c=c: c.sample(prompt, 1, greedy).result())
            for key, c in clients.items()
        }
        mixed = pool.submit(base_sample)
        got = {key: list(f.result().sequences[0].tokens) for key, f in futures.items()}
        base_mixed = mixed.result()
    assert got == expected
    # A base-model request gets no adapter, whether alone or batched with adapters' requests,
    # whatever the sampler's LoRA slots hold (vLLM-CPU's reference ops gave it the last slot's).
    for tokens, logprobs in (base_sample(), base_mixed):
        assert tokens == base_before[0]
        np.testing.assert_allclose(logprobs, base_before[1], atol=1e-4)


def test_bad_sampling_requests_are_user_errors(
    service_client: tinker.ServiceClient, server: object
) -> None:
    base = service_client.create_sampling_client(base_model=DEFAULT_MODEL).result()
    prompt = types.ModelInput.from_ints([1, 2, 3])
    too_long = types.ModelInput.from_ints([5] * 9000)  # the context is 8,192
    expect_user_error(base.sample(too_long, 1, types.SamplingParams(max_tokens=4)), "context")
    expect_user_error(base.sample(prompt, 1, types.SamplingParams(max_tokens=0)), "max_tokens")
    expect_user_error(
        base.sample(prompt, 1, types.SamplingParams(max_tokens=4, top_p=1.5)), "top_p"
    )
    expect_user_error(
        base.sample(prompt, 1, types.SamplingParams(max_tokens=4, top_p=0.0)), "top_p"
    )
    expect_user_error(
        base.sample(prompt, 1, types.SamplingParams(max_tokens=4, temperature=-1.0)), "temperature"
    )
    with pytest.raises(Exception, match="tinker://"):
        service_client.create_sampling_client(model_path="tinker://only-two/parts").result()
    with pytest.raises(Exception, match="does not exist"):
        service_client.create_sampling_client(
            model_path="tinker://no-run/sampler_weights/none"
        ).result()
    rest = tinker.RestClient(base_url=server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    with pytest.raises(tinker.NotFoundError):
        rest.get_sampler("no-such-session:sample:0").result()
    # The sampler keeps serving.
    assert (
        len(
            base.sample(prompt, 1, types.SamplingParams(max_tokens=3, temperature=0.0))
            .result()
            .sequences[0]
            .tokens
        )
        == 3
    )


def test_inflight_samplers_follow_their_training_client_forward_only(
    service_client: tinker.ServiceClient,
) -> None:
    """``kind="inflight"``: a client made at W1 samples W2 once the inflight save of W2 is done;
    one made at W2 never samples W1; a snapshot made at W1 keeps W1."""
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    probe = types.ModelInput.from_ints(random_tokens(5600, 12))

    def step(seed: int) -> None:
        tc.forward_backward([datum(random_tokens(seed, 16))], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=2e-2)).result()

    def logprobs(client: tinker.SamplingClient) -> np.ndarray:
        return np.array(client.compute_logprobs(probe).result()[1:], dtype=float)

    step(5601)
    at_w1 = tc.save_weights_and_get_sampling_client(kind="inflight").result()
    snapshot_w1 = tc.save_weights_and_get_sampling_client().result()
    w1 = logprobs(snapshot_w1)
    np.testing.assert_allclose(logprobs(at_w1), w1, atol=1e-5)
    step(5602)
    at_w2 = tc.save_weights_and_get_sampling_client(kind="inflight").result()
    w2 = logprobs(at_w2)
    assert np.abs(w2 - w1).max() > 1e-2  # the step moved the weights
    np.testing.assert_allclose(logprobs(at_w1), w2, atol=1e-5)  # the W1 client moved on
    np.testing.assert_allclose(logprobs(snapshot_w1), w1, atol=1e-5)  # the snapshot did not


def test_provenance_spans_name_the_callers_own_sampled_sequences(
    server: object, service_client: tinker.ServiceClient
) -> None:
    """A datum's provenance spans (which tokens were a sampled sequence's prompt and sample)
    reach the trainer when they tile the datum and name the caller's own sequences; other
    spans are user errors naming the field."""
    from tests.conftest import OTHER_TENANT_KEY

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=2).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = random_tokens(5700, 6)
    seq = (
        sampler.sample(types.ModelInput.from_ints(prompt), 2, types.SamplingParams(max_tokens=4))
        .result()
        .sequences[1]
    )
    assert seq.sequence_id and seq.sequence_id.endswith(":1"), seq.sequence_id
    tokens = prompt + list(seq.tokens)

    def spans_datum(sequence_id: str, short: int = 0) -> types.Datum:
        """The datum's runs: the prompt, then the sample (``short`` tokens too few)."""
        base = datum(tokens)
        n = len(tokens) - 1
        p = len(prompt)
        runs = [
            types.PromptProvenanceSpan(sequence_id=sequence_id, offset=0, length=p),
            types.SampledProvenanceSpan(sequence_id=sequence_id, offset=0, length=n - p - short),
        ]
        return types.Datum(
            model_input=base.model_input,
            loss_fn_inputs=base.loss_fn_inputs,
            model_input_spans=runs,
            loss_fn_input_spans=runs,
        )

    out = tc.forward_backward([spans_datum(seq.sequence_id)], "cross_entropy")
    assert out.result().metrics["loss:sum"] > 0
    other = tinker.ServiceClient(base_url=server.base_url, api_key=OTHER_TENANT_KEY)  # type: ignore[attr-defined]
    # recorded as theirs (record_stability_info), beyond their request's own retention
    theirs = other.create_sampling_client(
        base_model=DEFAULT_MODEL, record_stability_info=True
    ).result()
    their_seq = (
        theirs.sample(types.ModelInput.from_ints(prompt), 1, types.SamplingParams(max_tokens=4))
        .result()
        .sequences[0]
    )
    for sequence_id in (their_seq.sequence_id, "made-up:0"):
        expect_user_error(
            tc.forward_backward([spans_datum(sequence_id)], "cross_entropy"),
            "data[0].model_input_spans[0].sequence_id",
            "not a sequence you sampled",
        )
    expect_user_error(  # the runs cover one token too few
        tc.forward_backward([spans_datum(seq.sequence_id, short=1)], "cross_entropy"),
        "data[0].model_input_spans",
        "cover",
    )
