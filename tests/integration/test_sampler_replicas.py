"""Workers that die under load: two vLLM sampler replicas behind one server (concurrent requests
spread over both, a replica SIGKILLed under load loses no request and is replaced with its adapters),
and trainer ranks SIGKILLed while training requests are in flight (those requests fail with a
retryable error, every rank restarts by itself, and each training client continues exactly from its
last optimizer step, AdamW state included) - for one rank and for one of two ZeRO-2 ranks."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tinker
import yaml
from tinker import types

from tests.conftest import DEFAULT_MODEL, ROOT, ZERO2_MODEL
from tests.integration.helpers import datum, model_status, random_tokens

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_replica_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tinsmith.cluster.launcher import ServerProcess

    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["models"] = raw["models"][:2]  # the default model, and the same weights on two ZeRO-2 trainer ranks
    raw["sampler"]["num_replicas"] = 2
    config = tmp_path_factory.mktemp("replicas") / "two-replicas.yaml"
    config.write_text(yaml.safe_dump(raw))
    with ServerProcess(config) as proc:
        yield proc


def _status(server: object) -> dict[str, object]:
    return model_status(server, DEFAULT_MODEL)


def test_requests_spread_and_survive_a_killed_replica(two_replica_server: object) -> None:
    service = tinker.ServiceClient(base_url=two_replica_server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    tc = service.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    tc.forward_backward([datum(random_tokens(6000, 24))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(random_tokens(6001, 8))

    def sample(max_tokens: int, seed: int) -> list[int]:
        params = types.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed)
        return list(sampler.sample(prompt, 1, params).result().sequences[0].tokens)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: sample(4, i), range(16)))
    served = _status(two_replica_server)["sampler_requests"]
    assert len(served) == 2 and min(served) > 0, served  # type: ignore[arg-type]

    victim = next(w for w in _status(two_replica_server)["workers"] if w["kind"] == "sampler" and w["index"] == 1)  # type: ignore[union-attr, index]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(sample, 48, 100 + i) for i in range(24)]
        time.sleep(1.0)
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result(timeout=600) for f in futures]
    assert all(len(r) == 48 for r in results)
    # Later requests, old and new adapters alike, are served while the dead replica is replaced.
    assert len(sample(4, 999)) == 4
    tc.forward_backward([datum(random_tokens(6002, 24))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    newer = tc.save_weights_and_get_sampling_client().result()
    assert len(newer.sample(prompt, 1, types.SamplingParams(max_tokens=4)).result().sequences[0].tokens) == 4

    # The dead replica is replaced without a manual step, with the adapters it had.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _status(two_replica_server)
        if status["sampler_alive"] == [True, True]:
            break
        time.sleep(2)
    assert status["sampler_alive"] == [True, True] and status["sampler_restarts"] == [0, 1], status
    before = list(_status(two_replica_server)["sampler_requests"])  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: sample(4, 2000 + i), range(16)))
    after = _status(two_replica_server)["sampler_requests"]
    assert after[1] > before[1], (before, after)  # type: ignore[index]


@pytest.mark.parametrize(("base_model", "victim_rank"), [(DEFAULT_MODEL, 0), (ZERO2_MODEL, 1)])
def test_a_killed_trainer_rank_is_restarted_and_every_client_continues(
    two_replica_server: object, base_model: str, victim_rank: int
) -> None:
    service = tinker.ServiceClient(base_url=two_replica_server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    probe = [datum(random_tokens(7000, 16))]
    batches = [[datum(random_tokens(7001 + i, 24))] for i in range(3)]
    adam = types.AdamParams(learning_rate=1e-3, weight_decay=0.01, grad_clip_norm=1.0)

    def step(tc: tinker.TrainingClient, i: int) -> None:
        tc.forward_backward(batches[i], "cross_entropy").result()
        tc.optim_step(adam).result()

    def logprobs(tc: tinker.TrainingClient) -> np.ndarray:
        out = tc.forward(probe, "cross_entropy").result()
        return np.array(out.loss_fn_outputs[0]["logprobs"].data)

    def trainer_pids() -> dict[int, int]:
        workers = model_status(two_replica_server, base_model)["workers"]
        return {w["index"]: w["pid"] for w in workers if w["kind"] == "trainer"}  # type: ignore[union-attr, index, misc]

    victim = service.create_lora_training_client(base_model=base_model, rank=8).result()
    step(victim, 0)
    step(victim, 1)
    before = logprobs(victim)
    restarts = model_status(two_replica_server, base_model)["trainer_restarts"]

    # Load: another client's forward_backward requests (4 x 128 tokens each) in flight; then SIGKILL.
    bystander = service.create_lora_training_client(base_model=base_model, rank=4).result()
    load = [datum(random_tokens(7100 + i, 128)) for i in range(4)]
    futures = [bystander.forward_backward(load, "cross_entropy") for _ in range(6)]
    old = trainer_pids()
    time.sleep(1.0)
    os.kill(old[victim_rank], signal.SIGKILL)
    outcomes = []
    for future in futures:  # none may hang; a failure is the server's, retryable, and says what happened
        try:
            future.result(timeout=600)
            outcomes.append("ok")
        except tinker.RequestFailedError as exc:
            assert str(exc.category).lower().endswith("server"), exc.category
            assert ("died during forward_backward" in str(exc) and "retry" in str(exc)) or "were lost" in str(exc), exc
            outcomes.append("died" if "died" in str(exc) else "lost")
    assert "died" in outcomes, outcomes

    deadline = time.monotonic() + 300  # the restart may still be finishing if the last request was the one that died
    while (status := model_status(two_replica_server, base_model))["trainer_restarts"] == restarts:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status["trainer_restarts"] == restarts + 1, status  # type: ignore[operator]
    new = trainer_pids()
    assert sorted(new) == sorted(old) and not set(new.values()) & set(old.values()), (old, new)

    # The victim is exactly at its last optimizer step, and its AdamW state came back too: one more
    # step gives what a client that never saw a crash gets from the same three steps.
    np.testing.assert_allclose(logprobs(victim), before, atol=1e-5)
    step(victim, 2)
    reference = service.create_lora_training_client(base_model=base_model, rank=8).result()
    for i in range(3):
        step(reference, i)
    np.testing.assert_allclose(logprobs(victim), logprobs(reference), atol=1e-4)

    # The bystander goes on too (its first call may report, once, the gradients the restart dropped).
    try:
        bystander.forward_backward(load, "cross_entropy").result()
    except tinker.RequestFailedError as exc:
        assert "were lost" in str(exc), exc
        bystander.forward_backward(load, "cross_entropy").result()
    assert "grad_norm:mean" in bystander.optim_step(adam).result().metrics
