"""Request limits: body size (413, before the body is read), datums and tokens per request (413).

The per-tenant limit on unfinished requests (429) lives in ``FutureStore.submit``, where futures
are counted. Limits come from ``limits:`` in the config (``LimitsConfig``); the SDK is told the
datum limit through ``/client/config`` so it chunks its batches to fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinsmith.cluster.config import LimitsConfig
from tinsmith.errors import TooLargeError

if TYPE_CHECKING:
    from tinsmith.types.training import ForwardBackwardInput


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 without being buffered.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is
    counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge
            return message

        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except Exception:  # _BodyTooLarge, possibly wrapped by the framework on its way out
            if not refused:
                raise
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = (
            f'{{"detail":"request body is larger than limits.max_body_bytes = {self.max_bytes}"}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def check_forward_backward(fb: ForwardBackwardInput, limits: LimitsConfig) -> None:
    """Refuse (413) a forward_backward with more datums or
    model-input tokens than the limits allow."""
    if len(fb.data) > limits.max_datums_per_request:
        raise TooLargeError(
            f"forward_backward_input.data has {len(fb.data)} datums; limits.max_datums_per_request "
            f"is {limits.max_datums_per_request}: send them in several requests"
        )
    # Images the server has not measured yet count 0 here; the check runs again once they are.
    tokens = sum(d.model_input.min_length for d in fb.data)
    if tokens > limits.max_tokens_per_request:
        raise TooLargeError(
            f"forward_backward_input.data has {tokens} model-input tokens; "
            f"limits.max_tokens_per_request is {limits.max_tokens_per_request}: "
            "send fewer datums per request"
        )
