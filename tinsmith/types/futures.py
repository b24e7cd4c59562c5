"""The futures protocol: every mutating call returns a request id that ``retrieve_future`` polls."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from tinsmith.types.base import Text, WireModel


class RequestErrorCategory(StrEnum):
    """Whose fault a failed future was; the SDK exposes it as ``RequestFailedError.category``."""

    UNKNOWN = "unknown"
    SERVER = "server"
    USER = "user"


class UntypedAPIFuture(WireModel):
    """What every mutating call answers at once: the request id to poll with ``retrieve_future``
    (``asample`` adds one ``sample_sequence_ids`` entry per sample)."""

    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(WireModel):
    """``POST /retrieve_future``: the SDK's poll for a future's result."""

    request_id: Text
    allow_metadata_only: bool = False


class TryAgainResponse(WireModel):
    """``retrieve_future``'s answer while a request still runs; the SDK polls again at once."""

    type: Literal["try_again"] = "try_again"
    request_id: str
    queue_state: Literal["active", "paused_capacity", "paused_rate_limit"] = "active"
    queue_state_reason: str | None = None


class RequestFailedResponse(WireModel):
    """``retrieve_future``'s answer for a failed request; the SDK raises ``RequestFailedError``."""

    error: str
    category: RequestErrorCategory
