"""Trainer rank 1 of two ZeRO-3 ranks SIGKILLed while training requests are in flight: the
request fails with a retryable error instead of hanging on the surviving rank's collective, both
ranks are restarted with a fresh rendezvous, and every training client continues exactly from
its last optimizer step. On the session server's two-rank model; the one-rank case is in
second_server/test_sampler_replicas.py. Also: a rank SIGKILLed while a weight sync's export
waits on it fails that save retryably, and the next save and its sampling client work."""

from __future__ import annotations

import os
import signal
import time

import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, ZERO3_MODEL
from tests.integration.helpers import check_trainer_restart, datum, model_status, random_tokens

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_killed_zero3_rank_is_restarted_and_every_client_continues(server: object) -> None:
    check_trainer_restart(server, ZERO3_MODEL, victim_rank=1)


def _trainer_pids(server: object, base_model: str) -> dict[int, int]:
    workers = model_status(server, base_model)["workers"]
    return {w["index"]: w["pid"] for w in workers if w["kind"] == "trainer"}  # type: ignore[union-attr, index, misc]


def test_a_rank_killed_while_a_weight_sync_export_waits_on_it_fails_that_save_retryably(
    server: object,
) -> None:
    """The default model's only rank runs another client's long forward_backward; the victim's
    ``save_weights_and_get_sampling_client`` is sent meanwhile, so its export is submitted to the
    rank (in the victim's seq_id turn, which that other client does not hold) and queued behind
    the forward_backward; then the rank is SIGKILLed. Both requests were on the dead rank, and
    each fails with the retryable server error naming its own call (the forward_backward only
    if it had not finished yet); the ranks restart; the next save works and its client samples.
    """
    service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    victim = service.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    victim.forward_backward([datum(random_tokens(7400, 24))], "cross_entropy").result()
    victim.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    # A first sync: rank 0's node is then known, so the save under test asks the rank only for
    # the export (nothing in its turn waits on the rank).
    victim.save_weights_and_get_sampling_client().result(timeout=600)
    restarts = model_status(server, DEFAULT_MODEL)["trainer_restarts"]
    old = _trainer_pids(server, DEFAULT_MODEL)  # now: a status call would queue behind the load

    # ~4800 tokens: many seconds of work on the rank (about 200 tokens/s on a CPU).
    bystander = service.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    long_batch = [datum(random_tokens(7500 + i, 801)) for i in range(6)]
    running = bystander.forward_backward(long_batch, "cross_entropy")
    time.sleep(2.0)  # the forward_backward is running on the rank
    save = victim.save_weights_and_get_sampling_client()  # its export queues behind it there
    time.sleep(1.5)
    os.kill(old[0], signal.SIGKILL)

    with pytest.raises(tinker.RequestFailedError) as info:
        save.result(timeout=600)
    message = str(info.value)
    assert str(info.value.category).lower().endswith("server"), info.value.category
    assert "trainer rank 0" in message and "retry" in message, message
    assert "died during save_weights_for_sampler" in message, message
    try:
        running.result(timeout=600)
    except tinker.RequestFailedError as exc:
        assert str(exc.category).lower().endswith("server"), exc.category
        assert "died during forward_backward" in str(exc) and "retry" in str(exc), exc

    deadline = time.monotonic() + 300
    while (status := model_status(server, DEFAULT_MODEL))["trainer_restarts"] == restarts:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status["trainer_restarts"] == restarts + 1, status  # type: ignore[operator]
    assert _trainer_pids(server, DEFAULT_MODEL)[0] != old[0]

    # The failed save left the victim usable: the next one works and its client samples.
    sampler = victim.save_weights_and_get_sampling_client().result(timeout=600)
    prompt = types.ModelInput.from_ints(random_tokens(7600, 8))
    out = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=4)).result(timeout=600)
    assert len(out.sequences[0].tokens) == 4
