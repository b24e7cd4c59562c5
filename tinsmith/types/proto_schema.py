"""The SDK's published ``tinker_public`` protobuf schema, declared in code.

The messages the SDK sends and expects as protobuf are declared here as data (a
FileDescriptorProto built in code), so the server needs neither protoc nor the SDK installed.
``message_class`` returns the generated class of one message; the codecs are in ``proto``.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto
_PKG = "tinker_public"

# (name, number, type, label, type_name, oneof_name, proto3_optional)
_FieldSpec = tuple[str, int, int, int, str, str | None, bool]


def _f(
    name: str,
    num: int,
    ftype: int,
    *,
    rep: bool = False,
    ref: str = "",
    oneof: str | None = None,
    opt: bool = False,
) -> _FieldSpec:
    label = _F.LABEL_REPEATED if rep else _F.LABEL_OPTIONAL
    return (name, num, ftype, label, f".{_PKG}.{ref}" if ref else "", oneof, opt)


_B, _S, _I32, _I64, _U32, _U64, _D, _FL, _BOOL = (
    _F.TYPE_BYTES,
    _F.TYPE_STRING,
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_UINT32,
    _F.TYPE_UINT64,
    _F.TYPE_DOUBLE,
    _F.TYPE_FLOAT,
    _F.TYPE_BOOL,
)
_M, _E = _F.TYPE_MESSAGE, _F.TYPE_ENUM

_MESSAGES: dict[str, list[_FieldSpec]] = {
    "SampleResponse": [
        _f("sequences", 1, _M, rep=True, ref="SampledSequence"),
        _f("prompt_logprobs", 2, _B, opt=True),
        _f("topk_prompt_logprobs", 3, _M, ref="TopkLogprobs", opt=True),
        _f("prompt_cache_hit_tokens", 4, _I32),
        _f("target_prompt_logprobs", 5, _M, ref="Tensor", opt=True),
        _f("prompt_alt_tokens", 6, _M, ref="PromptAltTokens", opt=True),
    ],
    "PromptAltTokens": [_f("tokens", 1, _M, ref="Tensor"), _f("logprobs", 2, _M, ref="Tensor")],
    "SampledSequence": [
        _f("stop_reason", 1, _E, ref="StopReason"),
        _f("tokens", 2, _B),
        _f("logprobs", 3, _B, opt=True),
        _f("topk_sampled_logprobs", 4, _M, ref="TopkLogprobs", opt=True),
    ],
    "TopkLogprobs": [
        _f("token_ids", 1, _B),
        _f("logprobs", 2, _B),
        _f("k", 3, _U32),
        _f("length", 4, _U32),
    ],
    "SparseCsr": [_f("values", 1, _B), _f("crow_indices", 2, _B), _f("col_indices", 3, _B)],
    "Tensor": [
        _f("dense", 1, _B, oneof="encoding"),
        _f("sparse_csr", 2, _M, ref="SparseCsr", oneof="encoding"),
        _f("dtype", 3, _E, ref="DType"),
        _f("shape", 4, _I64, rep=True),
    ],
    "BatchedTensor": [
        _f("data", 1, _B),
        _f("offsets", 2, _B),
        _f("dtype", 3, _E, ref="DType"),
        _f("trailing_shape", 4, _I64, rep=True),
    ],
    "ArrayRecord": [
        _f("type_tag", 1, _S),
        _f("fields", 2, _M, rep=True, ref="ArrayRecord.FieldsEntry"),
        _f("num_datums", 3, _I64),
    ],
    "ForwardBackwardOutput": [
        _f("loss_fn_output_type", 1, _S),
        _f("loss_fn_outputs", 2, _M, rep=True, ref="ArrayRecord"),
        _f("metrics", 3, _M, rep=True, ref="ForwardBackwardOutput.MetricsEntry"),
    ],
    "ForwardBackwardRequest": [
        _f("model_id", 1, _S),
        _f("seq_id", 2, _I32),
        _f("data", 3, _M, rep=True, ref="Datum"),
        _f("loss_fn", 4, _S),
        _f("loss_fn_config", 5, _M, rep=True, ref="ForwardBackwardRequest.LossFnConfigEntry"),
        _f("forward_only", 6, _BOOL),
        _f("loss_fn_config_v2", 7, _M, rep=True, ref="ForwardBackwardRequest.LossFnConfigV2Entry"),
    ],
    "LossConfigValue": [_f("number", 1, _D, oneof="value"), _f("text", 2, _S, oneof="value")],
    "Datum": [
        _f("model_input", 1, _M, rep=True, ref="Chunk"),
        _f("loss_fn_inputs", 2, _M, rep=True, ref="Datum.LossFnInputsEntry"),
        _f("model_input_spans", 3, _M, rep=True, ref="ProvenanceSpan"),
        _f("loss_fn_input_spans", 4, _M, rep=True, ref="ProvenanceSpan"),
    ],
    "ProvenanceSpan": [
        _f("prompt_tokens", 1, _M, ref="PromptProvenanceSpan", oneof="span"),
        _f("sampled_tokens", 2, _M, ref="SampledProvenanceSpan", oneof="span"),
    ],
    "PromptProvenanceSpan": [
        _f("sequence_id", 1, _S),
        _f("offset", 2, _I64),
        _f("length", 3, _I64),
    ],
    "SampledProvenanceSpan": [
        _f("sequence_id", 1, _S),
        _f("offset", 2, _I64),
        _f("length", 3, _I64),
    ],
    "Chunk": [
        _f("encoded_text", 1, _M, ref="EncodedTextChunk", oneof="chunk"),
        _f("image", 2, _M, ref="ImageChunk", oneof="chunk"),
        _f("dmel", 3, _M, ref="DmelChunk", oneof="chunk"),
    ],
    "EncodedTextChunk": [_f("tokens", 1, _B)],
    "ImageChunk": [
        _f("data", 1, _B),
        _f("format", 2, _S),
        _f("expected_tokens", 3, _I32, opt=True),
        _f("override_dimensions", 4, _M, ref="ImageDimensions", opt=True),
    ],
    "ImageDimensions": [_f("width", 1, _U32), _f("height", 2, _U32)],
    "DmelChunk": [_f("dmel", 1, _B)],
}

# map<key, value> fields: (owner message, entry name, value type, value message)
_MAPS: list[tuple[str, str, int, str]] = [
    ("ArrayRecord", "FieldsEntry", _M, "BatchedTensor"),
    ("ForwardBackwardOutput", "MetricsEntry", _D, ""),
    ("ForwardBackwardRequest", "LossFnConfigEntry", _D, ""),
    ("ForwardBackwardRequest", "LossFnConfigV2Entry", _M, "LossConfigValue"),
    ("Datum", "LossFnInputsEntry", _M, "Tensor"),
]

_ENUMS: dict[str, list[tuple[str, int]]] = {
    "StopReason": [("STOP_REASON_STOP", 0), ("STOP_REASON_LENGTH", 1)],
    "DType": [
        ("DTYPE_UNSPECIFIED", 0),
        ("DTYPE_FLOAT32", 1),
        ("DTYPE_INT64", 2),
        ("DTYPE_INT32", 3),
        ("DTYPE_BFLOAT16", 4),
    ],
}

DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32, DTYPE_BFLOAT16 = 1, 2, 3, 4
STOP_REASON_STOP, STOP_REASON_LENGTH = 0, 1


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tinsmith_tinker_public.proto", package=_PKG, syntax="proto3"
    )
    for enum_name, values in _ENUMS.items():
        enum = fdp.enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for msg_name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=msg_name)
        by_name[msg_name] = msg
        oneofs: list[str] = []
        for name, number, ftype, label, type_name, oneof, opt in fields:
            field = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            group = oneof if oneof is not None else (f"_{name}" if opt else None)
            if group is not None:
                if group not in oneofs:
                    oneofs.append(group)
                    msg.oneof_decl.add(name=group)
                field.oneof_index = oneofs.index(group)
                field.proto3_optional = opt
    for owner, entry_name, value_type, value_ref in _MAPS:
        entry = by_name[owner].nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_S, label=_F.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=value_type, label=_F.LABEL_OPTIONAL)
        if value_ref:
            value.type_name = f".{_PKG}.{value_ref}"
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def message_class(name: str) -> type[Message]:
    """The generated class of a ``tinker_public`` message."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PKG}.{name}"))
