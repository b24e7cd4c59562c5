"""The futures protocol: every mutating call returns a request id that ``retrieve_future`` polls."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from tinsmith.types.base import Text, WireModel


class RequestErrorCategory(StrEnum):
    UNKNOWN = "unknown"
    SERVER = "server"
    USER = "user"


class UntypedAPIFuture(WireModel):
    request_id: str
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(WireModel):
    request_id: Text
    allow_metadata_only: bool = False


class TryAgainResponse(WireModel):
    type: Literal["try_again"] = "try_again"
    request_id: str
    queue_state: Literal["active", "paused_capacity", "paused_rate_limit"] = "active"
    queue_state_reason: str | None = None


class RequestFailedResponse(WireModel):
    error: str
    category: RequestErrorCategory
