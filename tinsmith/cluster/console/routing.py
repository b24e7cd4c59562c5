"""The console's router: HTML responses, and errors shown as pages rather than JSON."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.console.html import PREFIX, esc, page
from tinsmith.errors import NotFoundError, UserInputError

MAX_FORM_BYTES = 256 << 10  # a playground prompt of the longest context fits


def html(title: str, body: str, status: int = 200, signed_in: bool = True) -> HTMLResponse:
    """A console page as the response, for the request's tenant."""
    text, code = page(title, body, current_tenant() if signed_in else None, status)
    return HTMLResponse(text, status_code=code)


class ConsoleRoute(APIRoute):
    """A not-found or refused object is a page saying so (404 / 400), as the API says it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except NotFoundError as exc:
                return html("Not found", f'<p class="error">{esc(exc)}</p>', 404)
            except UserInputError as exc:
                return html("Refused", f'<p class="error">{esc(exc)}</p>', 400)

        return handler


def console_router() -> APIRouter:
    """A router under ``/console`` whose errors are pages, left out of the API schema."""
    return APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


async def form_fields(request: Request) -> dict[str, str]:
    """A posted form's fields (the last value of each), refused past ``MAX_FORM_BYTES``."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise UserInputError(f"form is larger than {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise UserInputError("form is not UTF-8") from exc
    return {name: values[-1] for name, values in fields.items()}
