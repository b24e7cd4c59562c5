"""The futures store: request ids for in-flight work, and long-polls that wait for them.

Every mutating call returns a request id at once; ``retrieve_future`` waits (up to a bound)
for the result. Results are kept encoded (JSON or protobuf bytes) so a retrieve is cheap. With a
metadata store, every future and its result are also written there: a restarted server still
answers for finished requests, fails (retryably) those it was running when it stopped, and keeps
honouring idempotency keys, so a retried request is applied once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

from tinsmith.errors import NotFoundError, TooManyRequestsError
from tinsmith.store.base import MetadataStore
from tinsmith.store.records import FutureResult, utcnow
from tinsmith.types.futures import RequestErrorCategory, RequestFailedResponse

log = logging.getLogger(__name__)

__all__ = ["FutureResult", "FutureStore", "failure"]


class FutureStore:
    """The server's in-flight and finished requests, each under the request id the SDK polls with
    ``retrieve_future``; scoped to the owning tenant."""

    def __init__(
        self,
        store: MetadataStore | None = None,
        keep_finished: int = 256,
        max_pending_per_owner: int | None = None,
    ) -> None:
        self._tasks: dict[str, asyncio.Task[FutureResult]] = {}
        self._pending: Counter[str] = Counter()
        self._max_pending = max_pending_per_owner
        self._owners: dict[str, str] = {}
        self._by_idempotency_key: dict[str, str] = {}
        self._key_of: dict[str, str] = {}  # request id -> its idempotency key
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._store = store
        self._keep_finished = keep_finished

    def submit(
        self,
        start: Callable[[], Awaitable[FutureResult]],
        idempotency_key: str | None = None,
        owner: str = "local",
    ) -> tuple[str, bool]:
        """Run ``start()``; returns (request_id, created). A repeated
        idempotency key reuses the first run.

        An owner with ``max_pending_per_owner`` unfinished requests gets ``TooManyRequestsError``
        (429) for a new one; a replay of a known key is still answered.
        """
        if idempotency_key:  # keys are per tenant: one tenant's key never names another's future
            idempotency_key = f"{owner}/{idempotency_key}"
        if idempotency_key and idempotency_key in self._by_idempotency_key:
            return self._by_idempotency_key[idempotency_key], False
        if self._max_pending is not None and self._pending[owner] >= self._max_pending:
            raise TooManyRequestsError(
                f"tenant {owner!r} has {self._pending[owner]} unfinished requests "
                f"(limits.max_pending_per_tenant = {self._max_pending}); "
                "retry when some have finished"
            )
        request_id = uuid.uuid4().hex
        if self._store is not None:
            first = self._store.add_future(request_id, idempotency_key, owner)
            if first != request_id:  # the key was used before a restart
                return first, False
        task = asyncio.ensure_future(start())
        self._tasks[request_id] = task
        self._owners[request_id] = owner
        self._pending[owner] += 1
        task.add_done_callback(lambda t: self._finish(request_id, t))
        if idempotency_key:
            self._by_idempotency_key[idempotency_key] = request_id
            self._key_of[request_id] = idempotency_key
        return request_id, True

    def _finish(self, request_id: str, task: asyncio.Task[FutureResult]) -> None:
        """Persist the result, and let old finished tasks go from memory (the store keeps them,
        and their idempotency keys, until ``prune``)."""
        owner = self._owners.get(request_id, "")
        self._pending[owner] -= 1
        if self._pending[owner] <= 0:
            del self._pending[owner]
        if self._store is None or task.cancelled():
            return
        try:
            self._store.finish_future(request_id, task.result())
        except Exception:
            log.exception("could not record the result of %s", request_id)
            return
        self._finished[request_id] = None
        while len(self._finished) > self._keep_finished:
            old, _ = self._finished.popitem(last=False)
            self._tasks.pop(old, None)
            self._owners.pop(old, None)
            key = self._key_of.pop(old, None)
            if key is not None:
                self._by_idempotency_key.pop(key, None)

    async def retrieve(
        self, request_id: str, timeout: float, owner: str = "local"
    ) -> FutureResult | None:
        """The result, or None if still pending after ``timeout`` seconds; only for its owner."""
        unknown = NotFoundError(f"request_id {request_id!r} is unknown")
        task = self._tasks.get(request_id)
        if task is not None and self._owners.get(request_id) != owner:
            raise unknown
        if task is None:
            found = self._store.get_future(request_id) if self._store is not None else None
            if found is None or found[0] != owner:
                raise unknown
            _, result = found
            if result is None:
                return failure("this request was lost; retry it", RequestErrorCategory.SERVER)
            return result
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return None

    def prune(self, retention_seconds: float) -> int:
        """Forget stored futures (results, idempotency keys) older than ``retention_seconds``;
        returns how many. The reaper calls this off the event loop."""
        if self._store is None:
            return 0
        cutoff = utcnow() - dt.timedelta(seconds=retention_seconds)
        forgotten = self._store.forget_futures(cutoff)
        if forgotten:
            log.info("forgot %d futures older than %.0f s", forgotten, retention_seconds)
        return forgotten

    def pending(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())


def failure(message: str, category: RequestErrorCategory) -> FutureResult:
    """A finished future that the SDK raises as a request failure (``RequestFailedResponse``)."""
    body = RequestFailedResponse(error=message, category=category).model_dump_json().encode()
    return FutureResult(kind="json", body=body, failed=True)


def interrupted_failure() -> FutureResult:
    """What futures of a previous server process that never finished now answer with."""
    return failure(
        "the server restarted before this request finished; its effect is unknown: retry it",
        RequestErrorCategory.SERVER,
    )
