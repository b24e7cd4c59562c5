"""The HTTP API server: Tinker's wire protocol in front of the coordinators.

``build_app`` assembles the routers (``tinsmith.cluster.routes``), the middleware (auth, body
limit, metrics), the mapping of errors to HTTP status codes, and the checkpoint reaper. Requests
are validated by the routes, which record a future for every mutating call and return its request
id at once (``tinsmith.cluster.submission`` maps a failed future's error to its category).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tinsmith.cluster.auth import KeyRing
from tinsmith.cluster.console import install_console
from tinsmith.cluster.jwt_tokens import JwtIssuer
from tinsmith.cluster.limits import BodyLimit
from tinsmith.cluster.routes import (
    admin,
    auth,
    checkpoints,
    hub,
    sampling,
    sessions,
    traces,
    training,
    weights,
)
from tinsmith.cluster.state import ServedModel, ServerState, attach
from tinsmith.errors import (
    ConflictError,
    NotFoundError,
    TooLargeError,
    TooManyRequestsError,
    UserInputError,
)

__all__ = ["ServedModel", "ServerState", "build_app"]

log = logging.getLogger(__name__)

_STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (UserInputError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
]


def build_app(state: ServerState) -> FastAPI:
    """The API server's app over ``state``: routes, middleware, error mapping, reaper."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_forever(state))
        try:
            yield
        finally:
            reaper.cancel()

    # The interactive docs and schema sit outside /api/v1 (no key checked): only in open mode.
    is_open = state.auth.mode == "open"
    app = FastAPI(
        title="tinsmith",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if is_open else None,
        redoc_url="/redoc" if is_open else None,
        openapi_url="/openapi.json" if is_open else None,
    )
    attach(app, state)
    jwts = None
    if state.auth.issue_jwts:
        jwts = JwtIssuer(state.checkpoints.derived_secret("jwt"), state.auth.jwt_ttl_seconds)
    keys = KeyRing(state.auth, state.store.tenant_for_key, jwts)
    attach(app, keys)
    keys.install(app)
    install_console(app, keys)
    app.add_middleware(
        BodyLimit,
        max_bytes=state.limits.max_body_bytes,
        max_json_bytes=state.limits.max_json_body_bytes,
    )
    state.metrics.install(app)  # added last, so it runs first: refused requests are counted too
    _install_error_handlers(app)
    for module in (sessions, training, sampling, admin, auth, weights, checkpoints, traces, hub):
        app.include_router(module.router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Errors raised by a route become a status code and ``{"detail": message}``."""
    for error, status in _STATUS_BY_ERROR:
        app.add_exception_handler(error, _detail_handler(status))

    @app.exception_handler(TooManyRequestsError)
    async def _too_many(_: Request, exc: TooManyRequestsError) -> JSONResponse:
        return JSONResponse(
            status_code=429, content={"detail": str(exc)}, headers={"Retry-After": "1"}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """Where and why only: echoing the refused input can fail to encode (NaN, bad UTF-8)."""
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})


def _detail_handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handler


async def _reap_forever(state: ServerState) -> None:
    """In the background, off every request's path: delete expired checkpoints (listings hide
    them at once), close quiet sessions, and forget futures past their retention."""
    retention = state.limits.future_retention_seconds
    chores: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("checkpoint reaper", lambda: asyncio.to_thread(state.checkpoints.reap)),
        ("session timeout", state.close_quiet_sessions),
        ("future retention", lambda: asyncio.to_thread(state.futures.prune, retention)),
    ]
    while True:
        await asyncio.sleep(state.reaper_seconds)
        for name, chore in chores:
            try:
                await chore()
            except Exception:
                log.exception("%s failed; will retry", name)
