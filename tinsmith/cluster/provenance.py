"""Provenance spans of training datums (``Datum.model_input_spans`` / ``loss_fn_input_spans``):
which tokens are a sampled sequence's prompt or sample. They are decoded and kept with the datum
(StableReinforce reads them; tinsmith refuses that loss, since its objective is unpublished), and
checked before any work: the runs tile the field they annotate (the model input, or
``target_tokens``: their lengths add up to its length; a run's ``offset`` is a position in the
named sequence's prompt or sample), and they name only sequences the caller sampled here
(``<request id>:<n>``, the ids the SDK gives each sampled sequence)."""

from __future__ import annotations

from collections.abc import Callable

from tinsmith.errors import UserInputError
from tinsmith.types.training import ForwardBackwardInput

MAX_SPANS_PER_DATUM = 4096
MAX_SEQUENCE_ID_CHARS = 256


def check_provenance(
    batch: ForwardBackwardInput, sequence_owner: Callable[[str], str | None], tenant: str
) -> None:
    """Refuse (``UserInputError``, naming the span) a span outside its datum or one naming a
    sequence that is not ``tenant``'s; ``sequence_owner``: the tenant of a sequence id, or
    None."""
    owners: dict[str, str | None] = {}
    for i, datum in enumerate(batch.data):
        images = bool(datum.model_input.images)
        n_input = datum.model_input.min_length
        targets = datum.loss_fn_inputs.get("target_tokens")
        n_loss = len(targets.data) if targets is not None else n_input
        for name, spans, bound in (
            ("model_input_spans", datum.model_input_spans, None if images else n_input),
            ("loss_fn_input_spans", datum.loss_fn_input_spans, n_loss),
        ):
            if not spans:
                continue
            if len(spans) > MAX_SPANS_PER_DATUM:
                raise UserInputError(
                    f"data[{i}].{name} has {len(spans)} spans; at most {MAX_SPANS_PER_DATUM}"
                )
            for j, span in enumerate(spans):
                where = f"data[{i}].{name}[{j}]"
                if span.offset < 0 or span.length < 0:
                    raise UserInputError(f"{where}: offset and length must be >= 0")
                _check_sequence(where, span.sequence_id, owners, sequence_owner, tenant)
            covered = sum(span.length for span in spans)
            if bound is not None and covered != bound:  # runs tile the field, in order
                raise UserInputError(
                    f"data[{i}].{name} cover {covered} tokens; the field they annotate has {bound}"
                )


def _check_sequence(
    where: str,
    sequence_id: str,
    owners: dict[str, str | None],
    sequence_owner: Callable[[str], str | None],
    tenant: str,
) -> None:
    _, sep, index = sequence_id.rpartition(":")
    if len(sequence_id) > MAX_SEQUENCE_ID_CHARS or not sep or not index.isdigit():
        raise UserInputError(f"{where}.sequence_id {sequence_id[:80]!r} is not a sequence id")
    if sequence_id not in owners:
        owners[sequence_id] = sequence_owner(sequence_id)
    if owners[sequence_id] != tenant:
        raise UserInputError(f"{where}.sequence_id {sequence_id!r} is not a sequence you sampled")
