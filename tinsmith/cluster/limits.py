"""Request limits: body size (413, before the body is read), datums and tokens per request (413).

JSON bodies have a limit of their own, far below the protobuf one: parsing JSON holds the
interpreter, so a few large JSON bodies at once would stall every other request (the health
check too) for as long as they took to parse.

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


PROTOBUF_PATHS = frozenset({"/api/v1/forward_backward"})
"""The routes whose bodies are protobuf (decoded off the event loop): ``max_body_bytes``."""


class BodyLimit:
    """ASGI middleware: a body over its limit gets 413 without being buffered: ``max_bytes``
    for the protobuf routes, ``max_json_bytes`` for every other.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body is
    counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") in PROTOBUF_PATHS:
            limit, name = self.max_bytes, "max_body_bytes"
        else:
            limit, name = self.max_json_bytes, "max_json_body_bytes"
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit, name)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
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
                await self._refuse(send, limit, name)

    async def _refuse(self, send: Send, limit: int, name: str) -> None:
        body = f'{{"detail":"request body is larger than limits.{name} = {limit}"}}'.encode()
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
