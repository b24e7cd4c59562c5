"""`GET /metrics` after real traffic: Prometheus counters for the routes used, tokens trained and
sampled, weight syncs, live training clients; and the request id echoed on every response."""

from __future__ import annotations

import urllib.request

import pytest
import tinker
from prometheus_client.parser import text_string_to_metric_families
from tinker import types

from tests.conftest import DEFAULT_MODEL
from tests.integration.helpers import datum, random_tokens

pytestmark = pytest.mark.integration


def _scrape(server: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=30) as resp:  # type: ignore[attr-defined]
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v for (n, ls), v in metrics.items() if n == name and labels.items() <= dict(ls).items()
    )


def test_metrics_count_the_traffic(service_client: tinker.ServiceClient, server: object) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    tc.forward_backward([datum(random_tokens(7000, 20))], "cross_entropy").result()
    tc.optim_step(types.AdamParams()).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    sampler.sample(
        types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=5)
    ).result()

    metrics = _scrape(server)
    for route in (
        "/api/v1/forward_backward",
        "/api/v1/optim_step",
        "/api/v1/asample",
        "/api/v1/retrieve_future",
    ):
        assert _value(metrics, "tinsmith_requests_total", route=route, status="200") > 0, route
    assert _value(metrics, "tinsmith_request_seconds_count", route="/api/v1/asample") > 0
    assert _value(metrics, "tinsmith_train_tokens_total", base_model=DEFAULT_MODEL) >= 19
    assert _value(metrics, "tinsmith_sampled_tokens_total", base_model=DEFAULT_MODEL) >= 5
    assert _value(metrics, "tinsmith_weight_sync_seconds_count") > 0
    assert _value(metrics, "tinsmith_futures_total", kind="forward_backward", outcome="ok") > 0
    assert _value(metrics, "tinsmith_training_clients", base_model=DEFAULT_MODEL) >= 1
    assert _value(metrics, "tinsmith_queue_depth", base_model=DEFAULT_MODEL) >= 0

    req = urllib.request.Request(
        f"{server.base_url}/api/v1/healthz", headers={"X-Request-Id": "trace-me-42"}
    )  # type: ignore[attr-defined]
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["x-request-id"] == "trace-me-42"
