"""Model inputs and tensors: ModelInput and its chunks, TensorData, Datum."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator

from tinsmith.types.base import InternalModel, Text, WireModel

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


# The number of tokens an image takes, when a client says it (advisory: the server measures it).
ExpectedTokens = Annotated[int | None, Field(default=None, ge=1, le=1 << 20)]


class ImageChunk(_BytesChunk):
    """An inline image (base64 in JSON) for a vision model. The server measures how many tokens it
    takes; ``expected_tokens``, if given, must agree."""

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: ExpectedTokens = None
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
    """An image by location instead of inline bytes (``images:`` in the config says which
    locations the server reads); the server replaces it by the ``ImageChunk`` it reads."""

    format: Literal["png", "jpeg"]
    location: Text
    expected_tokens: ExpectedTokens = None
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

    @property
    def images(self) -> list[ImageChunk | ImageAssetPointerChunk]:
        return [c for c in self.chunks if isinstance(c, ImageChunk | ImageAssetPointerChunk)]

    @property
    def min_length(self) -> int:
        """Tokens known before the server measures images (an unmeasured image counts 0, and so
        does audio, which no served model takes: it is refused when the input is tokenized)."""
        return sum(
            chunk.length
            if isinstance(chunk, EncodedTextChunk)
            else 0
            if isinstance(chunk, DmelChunk)
            else chunk.expected_tokens or 0
            for chunk in self.chunks
        )

    def to_ints(self) -> list[int]:
        """All tokens, in order; only text chunks can be turned into token ids."""
        return self.to_tokens(None)[0]

    def to_tokens(self, image_token_id: int | None) -> tuple[list[int], list[ImagePlacement]]:
        """All tokens, in order, each measured image (an ``ImageChunk`` with ``expected_tokens``)
        as that many ``image_token_id``; and where each image's tokens are. A model without
        images (``image_token_id`` None) takes text chunks only."""
        out: list[int] = []
        images: list[ImagePlacement] = []
        for i, chunk in enumerate(self.chunks):
            if isinstance(chunk, EncodedTextChunk):
                if image_token_id is not None and image_token_id in chunk.tokens:
                    raise ValueError(
                        f"chunks[{i}] holds token {image_token_id}, this model's image "
                        "placeholder: send images as image chunks"
                    )
                out.extend(chunk.tokens)
            elif (
                isinstance(chunk, ImageChunk)
                and image_token_id is not None
                and chunk.expected_tokens is not None
            ):
                images.append(
                    ImagePlacement(
                        data=chunk.data,
                        format=chunk.format,
                        offset=len(out),
                        tokens=chunk.expected_tokens,
                    )
                )
                out.extend([image_token_id] * chunk.expected_tokens)
            elif image_token_id is None or isinstance(chunk, DmelChunk):
                raise ValueError(f"chunks[{i}] ({chunk.type!r}): this model does not take it")
            else:
                raise ValueError(f"chunks[{i}] (an image) was not read and measured")
        return out, images


class ImagePlacement(InternalModel):
    """A measured image in a token sequence: its bytes, and the ``tokens`` placeholder positions
    from ``offset`` on that stand for it."""

    data: bytes
    format: Literal["png", "jpeg"]
    offset: int
    tokens: int


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
