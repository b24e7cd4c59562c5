"""Trainer rank 1 of two ZeRO-3 ranks SIGKILLed while training requests are in flight: the
request fails with a retryable error instead of hanging on the surviving rank's collective, both
ranks are restarted with a fresh rendezvous, and every training client continues exactly from
its last optimizer step; for one of two ZeRO-3 ranks, and for the default model's one rank with a
weight sync's export waiting on it when it dies (that save fails retryably, the next one works).
On the session server: both need a model whose steps take seconds."""

from __future__ import annotations

import pytest

from tests.conftest import DEFAULT_MODEL, ZERO3_MODEL
from tests.integration.helpers import check_trainer_restart

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_killed_zero3_rank_is_restarted_and_every_client_continues(server: object) -> None:
    check_trainer_restart(server, ZERO3_MODEL, victim_rank=1)


def test_a_killed_rank_fails_a_waiting_weight_sync_retryably_and_every_client_continues(
    server: object,
) -> None:
    check_trainer_restart(server, DEFAULT_MODEL, victim_rank=0, during_export=True)
