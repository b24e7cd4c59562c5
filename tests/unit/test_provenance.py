"""Provenance spans: decoded from the SDK's protobuf and kept, and checked (runs tile the field
they annotate; sequences are the caller's own)."""

from __future__ import annotations

import pytest

from tinsmith.cluster.provenance import check_provenance
from tinsmith.errors import UserInputError
from tinsmith.types import Datum, ForwardBackwardInput, ModelInput, TensorData
from tinsmith.types.data import PromptProvenanceSpan, SampledProvenanceSpan
from tinsmith.types.proto import decode_forward_backward_request, encode_forward_backward_request
from tinsmith.types.requests import ForwardBackwardRequest

OWNERS = {"req-a:0": "alice", "req-a:1": "alice", "req-b:0": "bob"}


def _datum(model_spans: list[object], loss_spans: list[object]) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints([1, 2, 3, 4, 5]),
        loss_fn_inputs={"target_tokens": TensorData(data=[2, 3, 4, 5, 6], dtype="int64")},
        model_input_spans=model_spans,  # type: ignore[arg-type]
        loss_fn_input_spans=loss_spans,  # type: ignore[arg-type]
    )


def _check(datum: Datum) -> None:
    check_provenance(
        ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"), OWNERS.get, "alice"
    )


def test_spans_survive_the_wire() -> None:
    spans = [
        PromptProvenanceSpan(sequence_id="req-a:0", offset=0, length=3),
        SampledProvenanceSpan(sequence_id="req-a:0", offset=0, length=2),
    ]
    datum = _datum(spans, spans)
    raw = encode_forward_backward_request(
        ForwardBackwardRequest(
            model_id="m",
            seq_id=1,
            forward_backward_input=ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
        )
    )
    decoded = decode_forward_backward_request(raw).forward_backward_input.data[0]
    assert decoded.model_input_spans == spans and decoded.loss_fn_input_spans == spans
    _check(decoded)


@pytest.mark.parametrize(
    ("spans", "needle"),
    [
        ([PromptProvenanceSpan(sequence_id="req-a:0", length=4)], "cover 4 tokens"),
        ([PromptProvenanceSpan(sequence_id="req-a:0", length=6)], "cover 6 tokens"),
        (
            [PromptProvenanceSpan(sequence_id="req-a:0", offset=-1, length=5)],
            "offset and length must be",
        ),
        ([PromptProvenanceSpan(sequence_id="req-b:0", length=5)], "not a sequence you sampled"),
        ([PromptProvenanceSpan(sequence_id="req-zz:0", length=5)], "not a sequence you sampled"),
        ([PromptProvenanceSpan(sequence_id="no-index", length=5)], "not a sequence id"),
    ],
)
def test_bad_spans_are_refused_naming_the_field(spans: list[object], needle: str) -> None:
    good = [SampledProvenanceSpan(sequence_id="req-a:1", length=5)]
    with pytest.raises(UserInputError, match=needle) as info:
        _check(_datum(spans, good))
    assert "data[0].model_input_spans" in str(info.value)


def test_recorded_sequences_keep_their_owner(tmp_path: object) -> None:
    from pathlib import Path

    from tinsmith.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(str(tmp_path)) / "meta.db")
    store.record_sequences(["r1:0", "r1:1"], "alice", "sess-1")
    store.record_sequences(["r1:0"], "bob", "sess-2")  # an id is recorded once
    assert store.sequence_owner("r1:1") == "alice" and store.sequence_owner("r1:0") == "alice"
    assert store.sequence_owner("r2:0") is None
