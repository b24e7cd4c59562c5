"""The futures store: request ids for in-flight work, and long-polls that wait for them.

Every mutating call returns a request id at once; ``retrieve_future`` waits (up to a bound)
for the result. Results are kept encoded (JSON or protobuf bytes) so a retrieve is cheap.
In-memory for now: a restart loses pending and finished futures (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from tinsmith.errors import NotFoundError
from tinsmith.types.futures import RequestErrorCategory, RequestFailedResponse

log = logging.getLogger(__name__)

ContentKind = Literal["json", "proto"]


@dataclass(frozen=True)
class FutureResult:
    """A finished future's HTTP body."""

    kind: ContentKind
    body: bytes
    failed: bool = False


class FutureStore:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[FutureResult]] = {}
        self._by_idempotency_key: dict[str, str] = {}

    def submit(
        self, start: Callable[[], Awaitable[FutureResult]], idempotency_key: str | None = None
    ) -> tuple[str, bool]:
        """Run ``start()``; returns (request_id, created). A repeated idempotency key reuses the first run."""
        if idempotency_key and idempotency_key in self._by_idempotency_key:
            return self._by_idempotency_key[idempotency_key], False
        request_id = uuid.uuid4().hex
        self._tasks[request_id] = asyncio.ensure_future(start())
        if idempotency_key:
            self._by_idempotency_key[idempotency_key] = request_id
        return request_id, True

    async def retrieve(self, request_id: str, timeout: float) -> FutureResult | None:
        """The result, or None if still pending after ``timeout`` seconds."""
        task = self._tasks.get(request_id)
        if task is None:
            raise NotFoundError(f"request_id {request_id!r} is unknown")
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return None

    def pending(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())


def failure(message: str, category: RequestErrorCategory) -> FutureResult:
    body = RequestFailedResponse(error=message, category=category).model_dump_json().encode()
    return FutureResult(kind="json", body=body, failed=True)
