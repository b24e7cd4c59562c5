"""Model inputs and tensors: ModelInput and its chunks, TensorData, Datum."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator

from tinsmith.types.base import Text, WireModel

TensorDtype = Literal["int64", "float32"]


class EncodedTextChunk(WireModel):
    """Token ids: the one kind of chunk this server trains and samples on."""

    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"

    @property
    def length(self) -> int:
        return len(self.tokens)


class _BytesChunk(WireModel):
    @staticmethod
    def _decode_b64(value: object) -> object:
        if isinstance(value, str):
            return base64.b64decode(value)
        return value


class ImageChunk(_BytesChunk):
    """An inline image (base64 in JSON). Parsed so a request is understood, but no served model
    takes images: turning it into tokens fails."""

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None
    type: Literal["image"] = "image"

    _b64 = field_validator("data", mode="before")(_BytesChunk._decode_b64)

    @field_serializer("data")
    def _ser_data(self, value: bytes) -> str:
        return base64.b64encode(value).decode()

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError("ImageChunk.expected_tokens is needed to know its length")
        return self.expected_tokens


class ImageAssetPointerChunk(WireModel):
    """An image by location instead of inline bytes; parsed, but no served model takes images."""

    format: Literal["png", "jpeg"]
    location: Text
    expected_tokens: int | None = None
    type: Literal["image_asset_pointer"] = "image_asset_pointer"

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError("ImageAssetPointerChunk.expected_tokens is needed to know its length")
        return self.expected_tokens


class DmelChunk(_BytesChunk):
    """Audio features (base64 in JSON); parsed, but no served model takes audio."""

    dmel: bytes
    type: Literal["dmel"] = "dmel"

    _b64 = field_validator("dmel", mode="before")(_BytesChunk._decode_b64)

    @field_serializer("dmel")
    def _ser_dmel(self, value: bytes) -> str:
        return base64.b64encode(value).decode()

    @property
    def length(self) -> int:
        raise ValueError("DmelChunk length is model specific")


ModelInputChunk = Annotated[
    EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk, Field(discriminator="type")
]


class ModelInput(WireModel):
    """A prompt or training sequence, as chunks: ``SampleRequest.prompt``, ``Datum.model_input``."""

    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=list(tokens))])

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=[])

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def to_ints(self) -> list[int]:
        """All tokens, in order; only text chunks can be turned into token ids."""
        out: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(
                    f"chunk of type {chunk.type!r} has no token ids (only encoded_text does)"
                )
            out.extend(chunk.tokens)
        return out


class TensorData(WireModel):
    """A flattened tensor; ``shape`` restores its dimensions. CSR indices make it sparse."""

    data: list[float] | list[int]
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    def tolist(self) -> list[float] | list[int]:
        return list(self.data)


LossFnInputs = dict[str, TensorData]
LossFnOutput = dict[str, TensorData]


class PromptProvenanceSpan(WireModel):
    """Marks tokens of a datum as a sampled sequence's prompt (``stable_reinforce`` data; parsed,
    not used)."""

    sequence_id: str
    offset: int = 0
    length: int
    type: Literal["prompt"] = "prompt"


class SampledProvenanceSpan(WireModel):
    """Marks tokens of a datum as sampled by a sequence (``stable_reinforce`` data; parsed, not
    used)."""

    sequence_id: str
    offset: int = 0
    length: int
    type: Literal["sampled"] = "sampled"


ProvenanceSpan = Annotated[
    PromptProvenanceSpan | SampledProvenanceSpan, Field(discriminator="type")
]


class Datum(WireModel):
    """One training example of ``forward_backward`` / ``forward``: the tokens, and the per-token
    inputs its loss reads (``target_tokens``, ``weights``, ``advantages``, ...)."""

    model_input: ModelInput
    loss_fn_inputs: LossFnInputs = Field(default_factory=dict)
    model_input_spans: list[ProvenanceSpan] | None = None
    loss_fn_input_spans: list[ProvenanceSpan] | None = None
