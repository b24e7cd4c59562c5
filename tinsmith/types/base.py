"""Shared pydantic bases for the wire types."""

from pydantic import BaseModel, ConfigDict


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
