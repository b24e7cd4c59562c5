"""Prometheus metrics of the API server, and the request id that every log line carries.

One registry per app (not the process-global default), so several apps in one process (tests)
never collide. Route labels are the route templates (``/api/v1/training_runs/{run_id}``), never
raw paths, to keep label sets small. Rates (training and sampled tokens/s) come from counters
with PromQL ``rate()``.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's own id, if it is one
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("tinsmith_request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request); futures inherit it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class ServerMetrics:
    """The API server's Prometheus metrics, in a registry of its own, served at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tinsmith_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tinsmith_request_seconds",
            "HTTP request latency (until the response; futures run on).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.futures = Counter(
            "tinsmith_futures_total",
            "Finished futures by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.future_seconds = Histogram(
            "tinsmith_future_seconds",
            "Time from submission to result, by kind.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.queue_depth = Gauge(
            "tinsmith_queue_depth",
            "Futures submitted and not finished, per base model.",
            ["base_model"],
            registry=r,
        )
        self.train_tokens = Counter(
            "tinsmith_train_tokens_total",
            "Tokens through forward_backward, per base model.",
            ["base_model"],
            registry=r,
        )
        self.sampled_tokens = Counter(
            "tinsmith_sampled_tokens_total",
            "Tokens sampled, per base model.",
            ["base_model"],
            registry=r,
        )
        self.weight_sync = Histogram(
            "tinsmith_weight_sync_seconds",
            "Ephemeral weight sync: trainer export until every sampler replica serves the adapter.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.training_clients = Gauge(
            "tinsmith_training_clients",
            "Live training clients (LoRA adapters), per base model.",
            ["base_model"],
            registry=r,
        )

    def install(self, app: FastAPI) -> None:
        """Count and time every request, give it a request id, and serve ``GET /metrics``."""

        @app.middleware("http")
        async def observe(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            given = request.headers.get("x-request-id", "")
            request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex[:16]
            token = REQUEST_ID.set(request_id)
            start = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                response.headers["x-request-id"] = request_id
                return response
            finally:
                route = request.scope.get("route")
                template = getattr(route, "path", "unmatched")
                self.requests.labels(request.method, template, str(status)).inc()
                self.latency.labels(template).observe(time.perf_counter() - start)
                REQUEST_ID.reset(token)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
