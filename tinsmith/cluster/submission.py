"""Starting a request's work as a future: idempotency keys, metrics, and the mapping of any
exception to a failed future of category ``user`` or ``server`` (never a crash)."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import BaseModel

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.futures import FutureResult, FutureStore, failure
from tinsmith.cluster.metrics import REQUEST_ID, ServerMetrics
from tinsmith.cluster.registry import ClientRegistry
from tinsmith.cluster.request_spans import Span, SpanLog, session_of
from tinsmith.errors import NotFoundError, TinsmithError, UserInputError
from tinsmith.types.futures import RequestErrorCategory, UntypedAPIFuture

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[FutureResult]]


class Submitter:
    """Runs each mutating request's work as a future and counts it in the metrics."""

    def __init__(
        self, futures: FutureStore, metrics: ServerMetrics, clients: ClientRegistry
    ) -> None:
        self._futures = futures
        self._metrics = metrics
        self._clients = clients
        self.spans = SpanLog()

    def submit(
        self,
        request: Request,
        work: Work,
        model_id: str | None = None,
        n_samples: int = 0,
        base_model: str | None = None,
        client_id: str | None = None,
    ) -> UntypedAPIFuture:
        """Start ``work`` as a future, unless the SDK's idempotency key names one already
        started. Its span goes to the session of ``client_id`` (default: ``model_id``)."""
        key = request.headers.get("x-idempotency-key")
        route = getattr(request.scope.get("route"), "path", request.url.path)
        kind = route.rsplit("/", 1)[-1]
        if base_model is None and model_id is not None:
            base_model = self._clients.base_model_of(model_id)
        observed = self._observed(work, kind, base_model or "-", client_id or model_id)
        request_id, _ = self._futures.submit(observed, idempotency_key=key, owner=current_tenant())
        seq_ids = [f"{request_id}:{i}" for i in range(n_samples)] if n_samples else None
        return UntypedAPIFuture(
            request_id=request_id, model_id=model_id, sample_sequence_ids=seq_ids
        )

    def _observed(self, work: Work, kind: str, base_model: str, client_id: str | None) -> Work:
        metrics, spans = self._metrics, self.spans

        async def observed() -> FutureResult:
            started, wall = time.perf_counter(), time.time()
            depth = metrics.queue_depth.labels(base_model)
            depth.inc()
            try:
                result = await _guard(work())
            finally:
                depth.dec()
            seconds = time.perf_counter() - started
            outcome = "failed" if result.failed else "ok"
            metrics.futures.labels(kind, outcome).inc()
            metrics.future_seconds.labels(kind).observe(seconds)
            if client_id:
                span = Span(kind, client_id, wall, seconds, result.failed)
                spans.add(session_of(client_id), span)
            return result

        return observed


def json_result(model: BaseModel) -> FutureResult:
    """A future's JSON result, as the SDK reads it (unset optional fields left out)."""
    return FutureResult(kind="json", body=model.model_dump_json(exclude_none=True).encode())


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps actor exceptions; the cause carries the category."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _category(exc: BaseException) -> RequestErrorCategory:
    return (
        RequestErrorCategory.USER
        if isinstance(exc, UserInputError | NotFoundError)
        else RequestErrorCategory.SERVER
    )


async def _guard(work: Awaitable[FutureResult]) -> FutureResult:
    """Turn any exception into a failed future (user or server category) instead of a crash."""
    try:
        return await work
    except Exception as raw:
        exc = _unwrap(raw)
        category = _category(exc)
        if category == RequestErrorCategory.SERVER:
            log.error("request failed: %s", "".join(traceback.format_exception(raw))[-4000:])
        if isinstance(exc, TinsmithError):
            return failure(str(exc), category)
        # Anything else is a bug or a library's error (logged above): its text may hold paths or
        # internals, so the client gets the request id to quote.
        return failure(
            f"internal error while serving this request (request id {REQUEST_ID.get()}); "
            "the server's log has the details",
            RequestErrorCategory.SERVER,
        )
