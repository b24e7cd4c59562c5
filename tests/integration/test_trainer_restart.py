"""Trainer rank 1 of two ZeRO-3 ranks SIGKILLed while training requests are in flight: the
request fails with a retryable error instead of hanging on the surviving rank's collective, both
ranks are restarted with a fresh rendezvous, and every training client continues exactly from
its last optimizer step. On the session server's two-rank model; the one-rank case, with a weight
sync's export waiting on the rank when it dies, is in second_server/test_sampler_replicas.py."""

from __future__ import annotations

import pytest

from tests.conftest import ZERO3_MODEL
from tests.integration.helpers import check_trainer_restart

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_killed_zero3_rank_is_restarted_and_every_client_continues(server: object) -> None:
    check_trainer_restart(server, ZERO3_MODEL, victim_rank=1)
