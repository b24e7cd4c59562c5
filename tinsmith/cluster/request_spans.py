"""What each session's requests did and when, for ``export_session_trace``: one span per
future (its route, the client it served, when its work started, how long it ran, whether it
failed), kept in memory and bounded, and written out as a trace that Perfetto opens.

The trace is the Chrome trace-event JSON format (``ui.perfetto.dev`` and ``chrome://tracing``
read it): one track per training or sampling client of the session, a slice per request. Spans
are not kept across a restart of the API server; the metrics per step the console plots are.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

# At most a million spans (~150 MB) whatever the clients do: the newest 20,000 requests of each
# of the 50 most recently active sessions.
MAX_SPANS_PER_SESSION = 20_000
MAX_SESSIONS = 50


@dataclass(frozen=True)
class Span:
    """One request's work: ``start`` in Unix seconds, ``seconds`` it ran."""

    name: str
    lane: str
    start: float
    seconds: float
    failed: bool


def session_of(client_id: str) -> str:
    """The session a training client (``<session>:train:<n>``) or sampling session
    (``<session>:sample:<n>``) belongs to."""
    for marker in (":train:", ":sample:"):
        if marker in client_id:
            return client_id.rsplit(marker, 1)[0]
    return client_id


class SpanLog:
    """The newest ``per_session`` spans of the ``sessions`` most recently active sessions."""

    def __init__(
        self, per_session: int = MAX_SPANS_PER_SESSION, sessions: int = MAX_SESSIONS
    ) -> None:
        self._per_session = per_session
        self._sessions = sessions
        self._spans: OrderedDict[str, deque[Span]] = OrderedDict()
        self._lock = threading.Lock()  # exports read from a worker thread

    def add(self, session_id: str, span: Span) -> None:
        with self._lock:
            spans = self._spans.pop(session_id, None)
            if spans is None:
                spans = deque(maxlen=self._per_session)
                while len(self._spans) >= self._sessions:
                    self._spans.popitem(last=False)
            spans.append(span)
            self._spans[session_id] = spans

    def spans(self, session_id: str) -> list[Span]:
        with self._lock:
            return list(self._spans.get(session_id, ()))


def chrome_trace(session_id: str, spans: list[Span]) -> bytes:
    """The spans as a trace: one thread (track) per client, named after it."""
    lanes: dict[str, int] = {}
    events: list[dict[str, object]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": f"session {session_id}"}}
    ]
    for span in sorted(spans, key=lambda s: s.start):
        if span.lane not in lanes:
            lanes[span.lane] = len(lanes) + 1
            events.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": 1,
                    "tid": lanes[span.lane],
                    "args": {"name": span.lane},
                }
            )
        events.append(
            {
                "ph": "X",
                "name": span.name,
                "cat": "failed" if span.failed else "ok",
                "pid": 1,
                "tid": lanes[span.lane],
                "ts": round(span.start * 1e6),
                "dur": max(1, round(span.seconds * 1e6)),
                "args": {"client": span.lane, "failed": span.failed},
            }
        )
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}).encode()
