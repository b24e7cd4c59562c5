"""Protobuf codec for the messages the SDK sends and expects as protobuf.

The schema is the SDK's published ``tinker_public`` package, declared in ``proto_schema``.
Tensors travel as raw little-endian bytes: ``decode_forward_backward_request`` turns them into
``tinsmith.types`` models, and the encoders do the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, cast

import numpy as np
from google.protobuf.message import DecodeError, Message

from tinsmith.types.data import (
    Datum,
    EncodedTextChunk,
    ImageChunk,
    ModelInput,
    ModelInputChunk,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    TensorData,
)
from tinsmith.types.proto_schema import (
    DTYPE_BFLOAT16,
    DTYPE_FLOAT32,
    DTYPE_INT32,
    DTYPE_INT64,
    STOP_REASON_LENGTH,
    STOP_REASON_STOP,
    message_class,
)
from tinsmith.types.requests import ForwardBackwardRequest
from tinsmith.types.sampling import SampleResponse, TopkLogprobs
from tinsmith.types.training import ForwardBackwardInput, ForwardBackwardOutput

ProvenanceSpanType = PromptProvenanceSpan | SampledProvenanceSpan

__all__ = [
    "DTYPE_BFLOAT16",
    "DTYPE_FLOAT32",
    "DTYPE_INT32",
    "DTYPE_INT64",
    "STOP_REASON_LENGTH",
    "STOP_REASON_STOP",
    "decode_forward_backward_request",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
    "message_class",
]


class _TensorMsg(Protocol):
    dense: bytes
    dtype: int
    shape: Sequence[int]


_NP_BY_DTYPE: dict[int, np.dtype] = {
    DTYPE_FLOAT32: np.dtype("<f4"),
    DTYPE_INT64: np.dtype("<i8"),
    DTYPE_INT32: np.dtype("<i4"),
    DTYPE_BFLOAT16: np.dtype("<u2"),  # the high half of a float32, widened in _tensor_from_proto
}


@contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix a ValueError's message with the field it concerns."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _frombuffer(raw: bytes, dtype: np.dtype, where: str) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise ValueError(
            f"{where} has {len(raw)} bytes, not a multiple of "
            f"{dtype.itemsize} ({dtype.name} values)"
        )
    return np.frombuffer(raw, dtype=dtype)


def _tensor_from_proto(tensor: Message) -> TensorData:
    """A Tensor as TensorData. Sparse ones stay sparse (CSR indices, checked): made dense, a tiny
    body could claim any shape and take any amount of memory."""
    msg = cast(_TensorMsg, tensor)
    if msg.dtype not in _NP_BY_DTYPE:
        raise ValueError(f"dtype {msg.dtype} is not supported")
    shape = [int(d) for d in msg.shape]
    if any(d < 0 for d in shape):
        raise ValueError(f"shape {shape} has a negative dimension")
    sparse = tensor.WhichOneof("encoding") == "sparse_csr"
    raw = cast(bytes, tensor.sparse_csr.values) if sparse else msg.dense
    arr = _frombuffer(raw, _NP_BY_DTYPE[msg.dtype], "sparse_csr.values" if sparse else "dense")
    if msg.dtype == DTYPE_BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        out = TensorData(
            data=arr.astype(np.int64).tolist(), dtype="int64", shape=shape or [arr.size]
        )
    else:
        out = TensorData(
            data=arr.astype(np.float32).tolist(), dtype="float32", shape=shape or [arr.size]
        )
    if sparse:
        crow, col = _csr_indices(tensor.sparse_csr, arr.size, shape)
        return out.model_copy(update={"sparse_crow_indices": crow, "sparse_col_indices": col})
    if shape and math.prod(shape) != arr.size:
        raise ValueError(
            f"shape {shape} needs {math.prod(shape)} values, but dense holds {arr.size}"
        )
    return out


def _csr_indices(csr: Message, nnz: int, shape: list[int]) -> tuple[list[int], list[int]]:
    """The CSR row offsets and column indices, checked against the values and the shape."""
    if len(shape) != 2:
        raise ValueError(f"sparse tensors must be 2-D, got shape {shape}")
    rows, cols = shape
    crow = _frombuffer(csr.crow_indices, np.dtype("<i8"), "sparse_csr.crow_indices")
    col = _frombuffer(csr.col_indices, np.dtype("<i8"), "sparse_csr.col_indices")
    if crow.size != rows + 1 or crow[0] != 0 or crow[-1] != nnz or bool(np.any(np.diff(crow) < 0)):
        raise ValueError(
            f"sparse_csr.crow_indices must be {rows + 1} non-decreasing offsets from 0 to {nnz}"
        )
    if col.size != nnz or bool(np.any((col < 0) | (col >= cols))):
        raise ValueError(f"sparse_csr.col_indices must be {nnz} column indices in [0, {cols})")
    return crow.tolist(), col.tolist()


def _chunk_from_proto(chunk: Message) -> ModelInputChunk:
    which = chunk.WhichOneof("chunk")
    if which == "encoded_text":
        tokens = _frombuffer(chunk.encoded_text.tokens, np.dtype("<i4"), "encoded_text.tokens")
        return EncodedTextChunk(tokens=tokens.tolist())
    if which == "image":
        img = chunk.image
        if img.format not in ("png", "jpeg"):
            raise ValueError(f"image.format {img.format!r} is not 'png' or 'jpeg'")
        expected = img.expected_tokens if img.HasField("expected_tokens") else None
        return ImageChunk(data=img.data, format=img.format, expected_tokens=expected)
    raise ValueError(f"chunk of kind {which!r} is not supported (encoded_text and image are)")


def decode_forward_backward_request(body: bytes) -> ForwardBackwardRequest:
    """Parse the SDK's protobuf ForwardBackwardRequest; raises ValueError on malformed input."""
    msg = message_class("ForwardBackwardRequest")()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise ValueError(f"body is not a valid ForwardBackwardRequest protobuf: {exc}") from exc
    m = cast(_FBRequestMsg, msg)
    data: list[Datum] = []
    for i, datum in enumerate(m.data):
        chunks: list[ModelInputChunk] = []
        for j, chunk in enumerate(datum.model_input):
            with _at(f"data[{i}].model_input[{j}]"):
                chunks.append(_chunk_from_proto(chunk))
        inputs: dict[str, TensorData] = {}
        for key, tensor in datum.loss_fn_inputs.items():
            with _at(f"data[{i}].loss_fn_inputs[{key!r}]"):
                inputs[key] = _tensor_from_proto(tensor)
        spans = {}
        for name in ("model_input_spans", "loss_fn_input_spans"):
            with _at(f"data[{i}].{name}"):
                found = [_span_from_proto(span) for span in getattr(datum, name)]
            spans[name] = found or None
        data.append(Datum(model_input=ModelInput(chunks=chunks), loss_fn_inputs=inputs, **spans))
    config: dict[str, float | str] = {k: float(v) for k, v in m.loss_fn_config.items()}
    for key, value in m.loss_fn_config_v2.items():
        kind = value.WhichOneof("value")
        if kind == "number":
            config[key] = float(value.number)
        elif kind == "text":
            config[key] = str(value.text)
    return ForwardBackwardRequest(
        model_id=m.model_id,
        seq_id=m.seq_id if m.seq_id else None,
        forward_only=m.forward_only,
        forward_backward_input=ForwardBackwardInput(
            data=data, loss_fn=m.loss_fn, loss_fn_config=config or None
        ),
    )


def _span_from_proto(span: Message) -> ProvenanceSpanType:
    """A provenance span: which tokens of a datum a sampled sequence's prompt or sample are."""
    kind = span.WhichOneof("span")
    if kind not in ("prompt_tokens", "sampled_tokens"):
        raise ValueError("a span is neither prompt_tokens nor sampled_tokens")
    p = cast(_SpanMsg, getattr(span, kind))
    cls = PromptProvenanceSpan if kind == "prompt_tokens" else SampledProvenanceSpan
    return cls(sequence_id=p.sequence_id, offset=p.offset, length=p.length)


class _SpanMsg(Protocol):
    sequence_id: str
    offset: int
    length: int


def _fill_span(target: _Msg, span: ProvenanceSpanType) -> None:
    which = target.prompt_tokens if span.type == "prompt" else target.sampled_tokens
    which.sequence_id = span.sequence_id
    which.offset = span.offset
    which.length = span.length


class _FBRequestMsg(Protocol):
    model_id: str
    seq_id: int
    data: Sequence[_DatumMsg]
    loss_fn: str
    loss_fn_config: dict[str, float]
    forward_only: bool
    loss_fn_config_v2: dict[str, Message]


class _DatumMsg(Protocol):
    model_input: Sequence[Message]
    loss_fn_inputs: dict[str, Message]
    model_input_spans: Sequence[Message]
    loss_fn_input_spans: Sequence[Message]


def encode_forward_backward_request(req: ForwardBackwardRequest) -> bytes:
    """Client-side encoding (tests and benchmarks use it to talk protobuf without the SDK)."""
    msg = message_class("ForwardBackwardRequest")()
    m = cast(_Msg, msg)
    m.model_id = req.model_id
    m.seq_id = req.seq_id or 0
    m.loss_fn = req.forward_backward_input.loss_fn
    m.forward_only = req.forward_only
    for datum in req.forward_backward_input.data:
        d = m.data.add()
        for chunk in datum.model_input.chunks:
            if isinstance(chunk, EncodedTextChunk):
                d.model_input.add().encoded_text.tokens = np.asarray(
                    chunk.tokens, dtype="<i4"
                ).tobytes()
        for key, td in datum.loss_fn_inputs.items():
            _fill_tensor(d.loss_fn_inputs[key], td)
        for span in datum.model_input_spans or []:
            _fill_span(d.model_input_spans.add(), span)
        for span in datum.loss_fn_input_spans or []:
            _fill_span(d.loss_fn_input_spans.add(), span)
    for key, value in (req.forward_backward_input.loss_fn_config or {}).items():
        if isinstance(value, str):
            m.loss_fn_config_v2[key].text = value
        else:
            m.loss_fn_config[key] = value
            m.loss_fn_config_v2[key].number = value
    return cast(bytes, msg.SerializeToString())


class _Msg(Protocol):
    """Structural stand-in for generated message classes, whose attributes mypy cannot see."""

    def __getattr__(self, name: str) -> _Msg: ...
    def __setattr__(self, name: str, value: object) -> None: ...
    def __getitem__(self, key: str) -> _Msg: ...
    def __setitem__(self, key: str, value: object) -> None: ...
    def add(self) -> _Msg: ...
    def extend(self, values: Sequence[int]) -> None: ...


def encode_forward_backward_output(out: ForwardBackwardOutput) -> bytes:
    """One ArrayRecord holding every per-datum output field as a BatchedTensor."""
    msg = message_class("ForwardBackwardOutput")()
    m = cast(_Msg, msg)
    m.loss_fn_output_type = out.loss_fn_output_type
    for key, value in out.metrics.items():
        m.metrics[key] = float(value)
    record = m.loss_fn_outputs.add()
    record.type_tag = "ArrayRecord"
    record.num_datums = len(out.loss_fn_outputs)
    keys: list[str] = sorted({k for datum_out in out.loss_fn_outputs for k in datum_out})
    for key in keys:
        arrays: list[np.ndarray] = []
        is_int = False
        for datum_out in out.loss_fn_outputs:
            td = datum_out[key]
            is_int = td.dtype == "int64"
            arrays.append(np.asarray(td.data, dtype="<i8" if is_int else "<f4"))
        blobs = [a.tobytes() for a in arrays]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("<i8")
        field = record.fields[key]
        field.data = b"".join(blobs)
        field.offsets = offsets.tobytes()
        field.dtype = DTYPE_INT64 if is_int else DTYPE_FLOAT32
    return cast(bytes, msg.SerializeToString())


def _fill_topk(target: _Msg, topk: TopkLogprobs) -> None:
    length = len(topk.token_ids)
    k = len(topk.token_ids[0]) if length else 0
    target.token_ids = np.asarray(topk.token_ids, dtype="<i4").reshape(length, k).tobytes()
    target.logprobs = np.asarray(topk.logprobs, dtype="<f4").reshape(length, k).tobytes()
    target.k = k
    target.length = length


def encode_sample_response(resp: SampleResponse) -> bytes:
    """The SampleResponse the SDK expects: tokens and logprobs as little-endian bytes."""
    msg = message_class("SampleResponse")()
    m = cast(_Msg, msg)
    for seq in resp.sequences:
        s = m.sequences.add()
        s.stop_reason = STOP_REASON_STOP if seq.stop_reason == "stop" else STOP_REASON_LENGTH
        s.tokens = np.asarray(seq.tokens, dtype="<i4").tobytes()
        if seq.logprobs is not None:
            s.logprobs = np.asarray(seq.logprobs, dtype="<f4").tobytes()
        if seq.topk_logprobs is not None:
            _fill_topk(s.topk_sampled_logprobs, seq.topk_logprobs)
    if resp.prompt_logprobs is not None:
        values = [np.nan if v is None else v for v in resp.prompt_logprobs]
        m.prompt_logprobs = np.asarray(values, dtype="<f4").tobytes()
    if resp.topk_prompt_logprobs is not None:
        _fill_topk(m.topk_prompt_logprobs, resp.topk_prompt_logprobs)
    if resp.target_prompt_logprobs is not None:
        _fill_tensor(m.target_prompt_logprobs, resp.target_prompt_logprobs)
    if resp.prompt_alt_tokens is not None:
        _fill_tensor(m.prompt_alt_tokens.tokens, resp.prompt_alt_tokens.tokens)
        _fill_tensor(m.prompt_alt_tokens.logprobs, resp.prompt_alt_tokens.logprobs)
    m.prompt_cache_hit_tokens = resp.prompt_cache_hit_tokens
    return cast(bytes, msg.SerializeToString())


def _fill_tensor(target: _Msg, td: TensorData) -> None:
    """A dense int64 or float32 ``Tensor`` (little-endian bytes) with its shape."""
    int64 = td.dtype == "int64"
    target.dense = np.asarray(td.data, dtype="<i8" if int64 else "<f4").tobytes()
    target.dtype = DTYPE_INT64 if int64 else DTYPE_FLOAT32
    target.shape.extend(td.shape or [len(td.data)])
