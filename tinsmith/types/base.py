"""Shared pydantic bases for the wire types, and the checked text type of request fields."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class WireModel(BaseModel):
    """A type exchanged with the tinker SDK.

    Unknown keys are ignored rather than refused: newer SDKs add optional fields, and a server
    that rejected them would break clients for no gain. Request validation that matters (types,
    ranges) still happens field by field.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class InternalModel(BaseModel):
    """A type passed between tinsmith's own components: strict, no unknown keys."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)


def _utf8(value: str) -> str:
    """Refuse lone surrogates: JSON may carry them (``"\\ud800"``), but UTF-8, SQLite and every
    response encoder cannot, so they would fail later and far from the field that held them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid unicode (lone surrogate at index {exc.start})"
        ) from None
    return value


def _utf8_tree(value: object) -> object:
    """``_utf8`` for every string and key inside free-form JSON (user metadata)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _utf8(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


Text = Annotated[str, AfterValidator(_utf8)]
"""``str`` for request fields: valid unicode only (no lone surrogates)."""

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,256}$")]
"""A session, model or sampling-session id from a request: the server makes these (``sess-...``,
``<session>:train:<n>``), so anything longer or with other characters is refused before it is
used as a key, stored, or put into a ``tinker://`` path."""

SeqNumber = Annotated[int, Field(ge=0, le=2**31 - 1)]
"""A client's sequence number for the models and samplers it creates (part of their ids)."""

Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
"""A random seed: the range torch and vLLM accept (a larger one would fail in the workers)."""

JsonMetadata = dict[Text, Annotated[object, AfterValidator(_utf8_tree)]]
"""Free-form ``user_metadata``: any JSON, with valid unicode in every string."""
