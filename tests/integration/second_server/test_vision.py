"""Images through the official SDK and the cookbook's own Qwen3-VL renderer, on the package's
server (the tiny random-weight Qwen3-VL: a real vision tower in the trainer and in vLLM).

The model learns to answer "red" or "blue" for a red and a blue square and samples each answer
back greedily from its image prompt; the sampler's prompt logprobs of an image prompt equal the
trainer's forward; the same image as an ImageAssetPointerChunk (from the server's assets_dir and
from the S3 test server) gives the same logprobs as inline; and every bad image is the client's
error (a 4xx or a future failed with category ``user``), after which the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest
import tinker
from PIL import Image
from tinker import types

from tests.conftest import S3_BUCKET
from tests.integration.helpers import expect_user_error
from tests.integration.second_server.conftest import ASSETS_S3_PREFIX, MODEL
from tests.swift_server import SwiftServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VL = "tinsmith/tiny-qwen3-vl"
QUESTION = "What color is this square?"


def square(color: str) -> Image.Image:
    return Image.new("RGB", (64, 64), color)


@pytest.fixture(scope="module")
def renderer() -> object:
    """The cookbook's qwen3_vl_instruct renderer with the model's tokenizer and image processor,
    loaded by its public name (from the cache `tinsmith prepare` filled)."""
    from tinker_cookbook.image_processing_utils import get_image_processor
    from tinker_cookbook.renderers import get_renderer
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    return get_renderer("qwen3_vl_instruct", get_tokenizer(VL), get_image_processor(VL))


def question(color: str) -> list[dict[str, object]]:
    image = {"type": "image", "image": square(color)}
    return [{"role": "user", "content": [image, {"type": "text", "text": QUESTION}]}]


def image_prompt(renderer: object) -> types.ModelInput:
    return renderer.build_generation_prompt(question("red"))  # type: ignore[attr-defined,no-any-return]


def with_image(prompt: types.ModelInput, chunk: object) -> types.ModelInput:
    """``prompt`` with its image chunk replaced by ``chunk``."""
    return types.ModelInput(
        chunks=[chunk if c.type == "image" else c for c in prompt.chunks]  # type: ignore[misc]
    )


def expanded(prompt: types.ModelInput, image_token: int) -> list[int]:
    out: list[int] = []
    for chunk in prompt.chunks:
        out += (
            [image_token] * chunk.expected_tokens  # type: ignore[union-attr]
            if chunk.type == "image"
            else list(chunk.tokens)  # type: ignore[union-attr]
        )
    return out


@pytest.fixture(scope="module")
def trained(
    second_client: tinker.ServiceClient, renderer: object
) -> tuple[tinker.TrainingClient, tinker.SamplingClient]:
    """A LoRA on the language model and its unembedding (the tiny random model's tied embeddings
    are too small for a confident answer without it) trained on the two colours until it tells
    them apart: in a plain transformers+peft run of the same data the loss sits at chance
    (ln 2 per datum) for ~40 steps at 5e-3, then falls; a fifth of the rate then settles it."""
    from tinker_cookbook.renderers import TrainOnWhat
    from tinker_cookbook.supervised.data import conversation_to_datum

    tc = second_client.create_lora_training_client(
        base_model=VL, rank=16, train_unembed=True
    ).result()
    assert tc.get_info().model_data.arch == "qwen3_vl"
    batch = [
        conversation_to_datum(
            [*question(color), {"role": "assistant", "content": color}],
            renderer,  # type: ignore[arg-type]
            max_length=None,
            train_on_what=TrainOnWhat.LAST_ASSISTANT_MESSAGE,
        )
        for color in ("red", "blue")
    ]
    assert all(any(c.type == "image" for c in d.model_input.chunks) for d in batch)
    losses = []
    for step in range(100):
        out = tc.forward_backward(batch, "cross_entropy").result()
        losses.append(out.metrics["loss:sum"])
        if losses[-1] < 0.15:
            break
        rate = 5e-3 if step < 40 else 1e-3
        tc.optim_step(types.AdamParams(learning_rate=rate)).result()
    assert losses[-1] < 0.3, losses  # both answers likely: chance would be 2 ln 2 = 1.39
    return tc, tc.save_weights_and_get_sampling_client().result()


def test_the_model_learns_each_image_and_samples_its_answer(
    trained: tuple[tinker.TrainingClient, tinker.SamplingClient], renderer: object
) -> None:
    _, sampler = trained
    params = types.SamplingParams(max_tokens=4, temperature=0.0)
    for color in ("red", "blue"):
        prompt = renderer.build_generation_prompt(question(color))  # type: ignore[attr-defined]
        seq = sampler.sample(prompt, 1, params).result().sequences[0]
        answer, _ = renderer.parse_response(seq.tokens)  # type: ignore[attr-defined]
        assert answer["content"] == color, (color, seq.tokens, answer)


def test_image_prompt_logprobs_equal_the_trainers_and_pointers_equal_inline(
    trained: tuple[tinker.TrainingClient, tinker.SamplingClient],
    renderer: object,
    second_server: object,
    assets_dir: Path,
    swift: SwiftServer,
) -> None:
    tc, sampler = trained
    prompt = image_prompt(renderer)
    inline = sampler.compute_logprobs(prompt).result()
    image_token = 49154  # configs/models/tiny-qwen3-vl.yaml's <|image_pad|>
    tokens = expanded(prompt, image_token)
    assert len(inline) == len(tokens) and inline[0] is None
    datum = types.Datum(
        model_input=prompt,
        loss_fn_inputs={"target_tokens": [*tokens[1:], 0], "weights": [1.0] * len(tokens)},
    )
    fwd = tc.forward([datum], "cross_entropy").result()
    trainer = np.array(fwd.loss_fn_outputs[0]["logprobs"].tolist())[:-1]
    np.testing.assert_allclose(np.array(inline[1:], dtype=float), trainer, atol=1e-3)

    image = next(c for c in prompt.chunks if c.type == "image")
    (assets_dir / "red.jpg").write_bytes(image.data)  # type: ignore[union-attr]
    s3 = boto3.client(
        "s3",
        endpoint_url=swift.endpoint_url,
        aws_access_key_id=swift.access_key,
        aws_secret_access_key=swift.secret_key,
        region_name="us-east-1",
    )
    s3.put_object(Bucket=S3_BUCKET, Key="assets/red.jpg", Body=image.data)  # type: ignore[union-attr]
    for location in ("red.jpg", f"{ASSETS_S3_PREFIX}red.jpg"):
        pointer = types.ImageAssetPointerChunk(location=location, format="jpeg")
        got = sampler.compute_logprobs(with_image(prompt, pointer)).result()
        np.testing.assert_allclose(
            np.array(got[1:], dtype=float), np.array(inline[1:], dtype=float), atol=1e-5
        )
    unsized = types.ImageChunk(data=image.data, format="jpeg")  # type: ignore[union-attr]
    got = sampler.compute_logprobs(with_image(prompt, unsized)).result()  # the server measures it
    np.testing.assert_allclose(np.array(got[1:], dtype=float), np.array(inline[1:], dtype=float))


def test_bad_images_are_user_errors(
    trained: tuple[tinker.TrainingClient, tinker.SamplingClient],
    renderer: object,
    second_client: tinker.ServiceClient,
) -> None:
    tc, sampler = trained
    prompt = image_prompt(renderer)
    image = next(c for c in prompt.chunks if c.type == "image")
    data: bytes = image.data  # type: ignore[union-attr]
    bad = {
        "expected_tokens is 5": types.ImageChunk(data=data, format="jpeg", expected_tokens=5),
        "not a PNG or JPEG": types.ImageChunk(data=b"garbage", format="png", expected_tokens=4),
        "format is 'png'": types.ImageChunk(data=data, format="png", expected_tokens=4),
        "reads no images from": types.ImageAssetPointerChunk(
            location=f"s3://{S3_BUCKET}/e2e-s3/x.jpg", format="jpeg", expected_tokens=4
        ),
        "no such asset": types.ImageAssetPointerChunk(
            location="../s3.yaml", format="jpeg", expected_tokens=4
        ),
    }
    for words, chunk in bad.items():
        expect_user_error(sampler.compute_logprobs(with_image(prompt, chunk)), words)
        if chunk.type == "image":  # the SDK's protobuf encoder has no pointer chunks
            datum = types.Datum(
                model_input=with_image(prompt, chunk),
                loss_fn_inputs={"target_tokens": [0] * 20, "weights": [1.0] * 20},
            )
            expect_user_error(tc.forward_backward([datum], "cross_entropy"), words)
    negative = types.ImageChunk(data=data, format="jpeg", expected_tokens=-1000)
    with pytest.raises(tinker.APIStatusError) as info:
        sampler.compute_logprobs(with_image(prompt, negative)).result()
    assert info.value.status_code in (400, 422) and "expected_tokens" in str(info.value.body)
    # A text-only model says so; the server and the same client keep working.
    text_tc = second_client.create_lora_training_client(base_model=MODEL, rank=4).result()
    text_datum = types.Datum(
        model_input=prompt, loss_fn_inputs={"target_tokens": [0] * 20, "weights": [1.0] * 20}
    )
    expect_user_error(text_tc.forward_backward([text_datum], "cross_entropy"), "text only")
    assert sampler.compute_logprobs(prompt).result()[1] is not None
    n = len(expanded(prompt, 49154))
    good = types.Datum(model_input=prompt, loss_fn_inputs={"target_tokens": [0] * n})
    assert tc.forward([good], "cross_entropy").result().loss_fn_outputs  # its seq_ids in order
