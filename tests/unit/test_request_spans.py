"""The spans behind export_session_trace: bounded per session and in sessions, and written as
Chrome trace JSON with a track per client."""

from __future__ import annotations

import json

from tinsmith.cluster.request_spans import Span, SpanLog, chrome_trace, session_of


def test_spans_are_bounded_per_session_and_in_sessions() -> None:
    log = SpanLog(per_session=3, sessions=2)
    for i in range(5):
        log.add("a", Span("forward_backward", "a:train:0", float(i), 0.5, False))
    assert [s.start for s in log.spans("a")] == [2.0, 3.0, 4.0]
    log.add("b", Span("asample", "b:sample:0", 0.0, 0.1, False))
    log.add("c", Span("asample", "c:sample:0", 0.0, 0.1, False))  # "a" was least recent
    assert log.spans("a") == [] and len(log.spans("c")) == 1
    assert session_of("s-1:train:3") == "s-1" and session_of("s-1:sample:0") == "s-1"


def test_the_trace_has_a_track_per_client() -> None:
    spans = [
        Span("forward_backward", "s:train:0", 10.0, 0.25, False),
        Span("asample", "s:sample:0", 10.1, 0.01, True),
        Span("optim_step", "s:train:0", 10.3, 0.05, False),
    ]
    events = json.loads(chrome_trace("s", spans))["traceEvents"]
    tracks = {e["args"]["name"]: e["tid"] for e in events if e["name"] == "thread_name"}
    assert set(tracks) == {"s:train:0", "s:sample:0"}
    slices = [e for e in events if e["ph"] == "X"]
    assert [(e["name"], e["tid"]) for e in slices] == [
        ("forward_backward", tracks["s:train:0"]),
        ("asample", tracks["s:sample:0"]),
        ("optim_step", tracks["s:train:0"]),
    ]
    assert slices[0]["ts"] == 10_000_000 and slices[0]["dur"] == 250_000
    assert slices[1]["cat"] == "failed"
