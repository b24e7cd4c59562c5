"""Session routes' wire types: ``RestClient``'s get, list, search and project calls, and the
finish call ``ServiceClient.close`` makes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field

from tinsmith.types.base import Identifier, Text, WireModel

SessionState = Literal["active", "client_finished", "cancelled"]
FinishReasonType = Literal["success", "errored", "interrupted"]


class SessionActive(WireModel):
    """A session that has not been finished or closed."""

    type: Literal["active"] = "active"


class FinishReason(WireModel):
    """Why the client finished its session (``ServiceClient.close(status)``)."""

    type: FinishReasonType = "success"


class ClientSessionFinished(WireModel):
    """The client finished the session (``POST /sessions/{id}/finish``)."""

    type: Literal["client_finished"] = "client_finished"
    reason: FinishReason = Field(default_factory=FinishReason)
    detail: str | None = None


class SessionCancelled(WireModel):
    """The server closed the session (it went quiet for longer than the session timeout)."""

    type: Literal["cancelled"] = "cancelled"
    detail: str | None = None


SessionStatus = Annotated[
    SessionActive | ClientSessionFinished | SessionCancelled, Field(discriminator="type")
]


class FinishSessionRequest(WireModel):
    """``POST /sessions/{id}/finish``."""

    reason: FinishReason = Field(default_factory=FinishReason)
    detail: Annotated[Text, Field(max_length=4096)] | None = None


class GetSessionResponse(WireModel):
    """``GET /sessions/{id}`` (``RestClient.get_session``)."""

    training_run_ids: list[str]
    sampler_ids: list[str]
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None


class ListSessionsResponse(WireModel):
    """``GET /sessions`` (``RestClient.list_sessions``): the caller's session ids, newest first."""

    sessions: list[str]


class SessionSummary(WireModel):
    """One session in a search result."""

    session_id: str
    created_at: dt.datetime
    owner: str
    project_id: str
    status: SessionStatus | None = None
    checkpoints_count: int
    display_name: str | None = None
    user_metadata: dict[str, str] | None = None
    checkpoint_storage_bytes: int | None = None


class SessionSearchCursor(WireModel):
    """Where the next page starts: after this session, in (created_at, session_id) order, newest
    first."""

    last_created_at: dt.datetime
    last_session_id: Identifier


class SearchOwner(WireModel):
    """Whose sessions: ``own``; ``accessible`` (every owner's the caller may see: here its own,
    as tenants never share sessions); ``user`` with ``owner_urns`` (only the caller's own name
    matches anything)."""

    type: Literal["own", "accessible", "user"] = "own"
    owner_urns: Annotated[list[Annotated[Text, Field(max_length=256)]], Field(max_length=10)] = (
        Field(default_factory=list)
    )


class StatusQuery(WireModel):
    """A status to match (the SDK's ``*SessionStatusQuery`` types); ``reasons`` narrows
    ``client_finished`` to those finish reasons."""

    type: Literal["active", "cancelled", "failed", "client_finished"]
    reasons: list[FinishReasonType] | None = None


class SessionSearchRequest(WireModel):
    """``POST /sessions/search`` (``RestClient.search_sessions``): every given filter must match;
    ``user_metadata`` pairs must all be present with those values, and so must ``tags``."""

    session_id: Identifier | None = None
    project_ids: (
        Annotated[list[Annotated[Text, Field(max_length=256)]], Field(max_length=100)] | None
    ) = None
    user_metadata: Annotated[dict[Text, Text], Field(max_length=64)] = Field(default_factory=dict)
    display_name: Annotated[Text, Field(max_length=1024)] | None = None
    tags: Annotated[list[Annotated[Text, Field(max_length=256)]], Field(max_length=64)] | None = (
        Field(default=None, description="tinsmith's own filter (SDK 0.38 has none): all given.")
    )
    owner: SearchOwner = Field(default_factory=SearchOwner)
    statuses: Annotated[list[StatusQuery], Field(max_length=8)] | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: SessionSearchCursor | None = None


class SessionSearchResponse(WireModel):
    """A page of sessions and, if there are more, where the next starts."""

    sessions: list[SessionSummary]
    next_cursor: SessionSearchCursor | None = None


class AssignProjectRequest(WireModel):
    """``PUT /sessions/{id}/project`` (``RestClient.assign_session_project``)."""

    project_id: Annotated[Text, Field(min_length=1, max_length=256)]


class SessionTraceExportResponse(WireModel):
    """``GET /sessions/{id}/trace_export``, which the SDK polls until ``ready``."""

    status: Literal["pending", "ready", "failed"]
    url: str | None = None
    error: str | None = None
