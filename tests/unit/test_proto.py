"""The protobuf codec against the official SDK's own converters (both directions)."""

from __future__ import annotations

import math

from tinker import types as tt
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)

from tinsmith.types import (
    ForwardBackwardOutput,
    SampledSequence,
    SampleResponse,
    TensorData,
    TopkLogprobs,
)
from tinsmith.types.proto import (
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
)


def test_sdk_forward_backward_request_decodes() -> None:
    datum = tt.Datum(
        model_input=tt.ModelInput.from_ints([11, 12, 13, 14]),
        loss_fn_inputs={"target_tokens": [12, 13, 14, 15], "weights": [0.0, 1.0, 1.0, -0.5]},
    )
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(
            data=[datum, datum],
            loss_fn="ppo",
            loss_fn_config={"clip_low_threshold": 0.8, "mode": "x"},
        ),
        model_id="sess:train:0",
        seq_id=7,
    )
    body = forward_backward_request_to_proto(request).SerializeToString()
    decoded = decode_forward_backward_request(body)
    assert decoded.model_id == "sess:train:0"
    assert decoded.seq_id == 7
    fb = decoded.forward_backward_input
    assert fb.loss_fn == "ppo"
    assert fb.loss_fn_config == {"clip_low_threshold": 0.8, "mode": "x"}
    assert len(fb.data) == 2
    assert fb.data[0].model_input.to_ints() == [11, 12, 13, 14]
    assert fb.data[0].loss_fn_inputs["target_tokens"].dtype == "int64"
    assert fb.data[0].loss_fn_inputs["target_tokens"].data == [12, 13, 14, 15]
    assert fb.data[1].loss_fn_inputs["weights"].data == [0.0, 1.0, 1.0, -0.5]


def test_forward_backward_output_decodes_in_sdk() -> None:
    out = ForwardBackwardOutput(
        loss_fn_outputs=[
            {"logprobs": TensorData(data=[-1.0, -2.5], dtype="float32", shape=[2])},
            {"logprobs": TensorData(data=[-0.5, -0.25, -3.0], dtype="float32", shape=[3])},
        ],
        metrics={"loss:sum": 4.5, "num_tokens:sum": 5.0},
    )
    sdk = deserialize_forward_backward_output(encode_forward_backward_output(out))
    assert sdk.metrics == {"loss:sum": 4.5, "num_tokens:sum": 5.0}
    assert [o["logprobs"].tolist() for o in sdk.loss_fn_outputs] == [
        [-1.0, -2.5],
        [-0.5, -0.25, -3.0],
    ]


def test_sample_response_decodes_in_sdk() -> None:
    resp = SampleResponse(
        sequences=[
            SampledSequence(
                stop_reason="stop",
                tokens=[5, 6],
                logprobs=[-0.5, -1.5],
                topk_logprobs=TopkLogprobs(
                    token_ids=[[5, 9], [6, 1]], logprobs=[[-0.5, -2.0], [-1.5, -3.0]]
                ),
            ),
            SampledSequence(stop_reason="length", tokens=[7], logprobs=None),
        ],
        prompt_logprobs=[None, -2.0, -0.75],
    )
    sdk = deserialize_sample_response(encode_sample_response(resp))
    assert sdk.sequences[0].tokens == [5, 6]
    assert sdk.sequences[0].stop_reason == "stop"
    assert sdk.sequences[0].logprobs == [-0.5, -1.5]
    assert sdk.sequences[1].stop_reason == "length"
    assert sdk.sequences[1].logprobs is None
    assert sdk.prompt_logprobs is not None
    assert sdk.prompt_logprobs[0] is None or math.isnan(sdk.prompt_logprobs[0])
    assert sdk.prompt_logprobs[1:] == [-2.0, -0.75]
