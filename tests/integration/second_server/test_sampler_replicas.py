"""Sampler replicas that die under load, on the package's second server: two vLLM replicas of
the tiny Qwen3 (concurrent requests spread over both, a replica SIGKILLed under load loses no
request and is replaced with its adapters). The status route lists the replacement, and stopping
the server stops it too (the package fixture checks). Trainer ranks killed under load:
test_trainer_restart.py."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest
import tinker
from tinker import types

from tests.integration.helpers import datum, model_status, random_tokens
from tests.integration.second_server.conftest import MODEL, REPLACEMENTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(server: object) -> dict[str, object]:
    return model_status(server, MODEL)


# Tokens per request while a replica is killed: enough that requests are in flight then.
LONG = 320


def test_requests_spread_and_survive_a_killed_replica(second_server: object) -> None:
    service = tinker.ServiceClient(base_url=second_server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    tc = service.create_lora_training_client(base_model=MODEL, rank=8).result()
    tc.forward_backward([datum(random_tokens(6000, 24))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(random_tokens(6001, 8))

    def sample(max_tokens: int, seed: int) -> list[int]:
        params = types.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed)
        return list(sampler.sample(prompt, 1, params).result().sequences[0].tokens)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: sample(4, i), range(16)))
    served = _status(second_server)["sampler_requests"]
    assert len(served) == 2 and min(served) > 0, served  # type: ignore[arg-type]

    victim = next(
        w for w in _status(second_server)["workers"] if w["kind"] == "sampler" and w["index"] == 1
    )  # type: ignore[union-attr, index]
    done_at: list[float] = []

    def long_sample(seed: int) -> list[int]:
        tokens = sample(LONG, seed)
        done_at.append(time.monotonic())
        return tokens

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(long_sample, 100 + i) for i in range(24)]
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result(timeout=600) for f in futures]
    assert all(len(r) == LONG for r in results)
    assert max(done_at) > killed_at, "every request finished before the kill: nothing was tested"
    # Later requests, old and new adapters alike, are served while the dead replica is replaced.
    assert len(sample(4, 999)) == 4
    tc.forward_backward([datum(random_tokens(6002, 24))], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    newer = tc.save_weights_and_get_sampling_client().result()
    assert (
        len(
            newer.sample(prompt, 1, types.SamplingParams(max_tokens=4)).result().sequences[0].tokens
        )
        == 4
    )

    # The dead replica is replaced without a manual step, with the adapters it had.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _status(second_server)
        if status["sampler_alive"] == [True, True]:
            break
        time.sleep(2)
    assert status["sampler_alive"] == [True, True] and status["sampler_restarts"] == [0, 1], status
    # The status route lists the replacement (a live worker), not the dead replica.
    replacement = next(
        (
            w
            for w in status["workers"]  # type: ignore[attr-defined]
            if w["kind"] == "sampler" and w["index"] == 1
        ),
        None,
    )
    assert replacement is not None, status
    assert replacement["pid"] != victim["pid"], (victim, replacement)
    REPLACEMENTS[replacement["pid"]] = "sampler replica 1 (a replacement)"
    before = list(_status(second_server)["sampler_requests"])  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: sample(4, 2000 + i), range(16)))
    after = _status(second_server)["sampler_requests"]
    assert after[1] > before[1], (before, after)  # type: ignore[index]
