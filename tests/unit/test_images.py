"""Images in requests, before any worker sees them (tinsmith/cluster/images.py): every image is
read from an allowed place, decoded, and measured by the model's own image processor (the tiny
Qwen3-VL's processor config from configs/models/); a bad image or location is a user error
naming the chunk and the reason, never a crash. Also: placeholders and placements of a measured
prompt, the config checks of image locations, and torchvision importing beside the CPU torch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from tests.conftest import ROOT
from tinsmith.actors.image_inputs import ImageProcessor
from tinsmith.cluster.config import ImagesConfig, parse_config
from tinsmith.cluster.images import ImageSource, resolve_images
from tinsmith.errors import ConfigurationError, TooLargeError, UserInputError
from tinsmith.types.data import (
    EncodedTextChunk,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
)

IMAGE_TOKEN = 49154


def image_bytes(color: str, size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> ImageProcessor:
    """The tiny Qwen3-VL's image processor (patch 16, 2x2 merge: a 64x64 image is 4 tokens)."""
    spec = yaml.safe_load((ROOT / "configs" / "models" / "tiny-qwen3-vl.yaml").read_text())
    model_dir = tmp_path_factory.mktemp("vl")
    (model_dir / "preprocessor_config.json").write_text(json.dumps(spec["processor"]))
    return ImageProcessor(model_dir)


def prompt(*chunks: EncodedTextChunk | ImageChunk | ImageAssetPointerChunk) -> ModelInput:
    return ModelInput(chunks=list(chunks))


def text(*tokens: int) -> EncodedTextChunk:
    return EncodedTextChunk(tokens=list(tokens))


def test_an_image_is_measured_and_placed(counter: ImageProcessor) -> None:
    source = ImageSource(ImagesConfig(), None)
    raw = prompt(text(1, 2), ImageChunk(data=image_bytes("red"), format="png"), text(3))
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = raw.length  # unmeasured: the SDK's own rule
    assert raw.min_length == 3
    measured = resolve_images(raw, "prompt", source, counter)
    assert measured.length == 2 + 4 + 1
    tokens, images = measured.to_tokens(IMAGE_TOKEN)
    assert tokens == [1, 2, *[IMAGE_TOKEN] * 4, 3]
    assert [(p.offset, p.tokens, p.format) for p in images] == [(2, 4, "png")]
    wide = ImageChunk(data=image_bytes("blue", (128, 64), "JPEG"), format="jpeg", expected_tokens=8)
    assert resolve_images(prompt(wide), "prompt", source, counter).length == 8


@pytest.mark.parametrize(
    ("chunk", "error", "words"),
    [
        (
            ImageChunk(data=image_bytes("red"), format="png", expected_tokens=5),
            UserInputError,
            ["chunks[1].expected_tokens is 5", "takes 4 tokens"],
        ),
        (ImageChunk(data=b"not an image", format="png"), UserInputError, ["not a PNG or JPEG"]),
        (
            ImageChunk(data=image_bytes("red"), format="jpeg"),
            UserInputError,
            ["format is 'jpeg'", "png image"],
        ),
        (
            ImageChunk(data=image_bytes("red", (400, 300)), format="png"),
            TooLargeError,
            ["400x300", "max_image_pixels"],
        ),
        (
            ImageChunk(data=image_bytes("red", (1, 300)), format="png"),
            UserInputError,
            ["aspect ratio"],
        ),
        (
            ImageChunk(data=image_bytes("red")[:60], format="png"),
            UserInputError,
            ["not a readable png image"],
        ),
    ],
)
def test_a_bad_image_is_a_user_error_naming_the_chunk(
    counter: ImageProcessor, chunk: ImageChunk, error: type[Exception], words: list[str]
) -> None:
    source = ImageSource(ImagesConfig(max_image_pixels=100_000), None)
    with pytest.raises(error) as info:
        resolve_images(prompt(text(1), chunk), "prompt", source, counter)
    message = str(info.value)
    assert "prompt.chunks[1]" in message and all(w in message for w in words), message


def test_a_text_model_refuses_images_and_sizes_are_bounded(
    counter: ImageProcessor,
) -> None:
    image = ImageChunk(data=image_bytes("red"), format="png")
    with pytest.raises(UserInputError, match="text only"):
        resolve_images(prompt(image), "prompt", ImageSource(ImagesConfig(), None), None)
    with pytest.raises(ValueError, match="does not take it"):
        prompt(text(1), image).to_tokens(None)
    with pytest.raises(ValueError, match="image placeholder"):  # as text it would miscount
        prompt(text(1, IMAGE_TOKEN)).to_tokens(IMAGE_TOKEN)
    small = ImageSource(ImagesConfig(max_image_bytes=1024), None)
    big = ImageChunk(data=image_bytes("red", (200, 200), "PNG") + b"\0" * 2048, format="png")
    with pytest.raises(TooLargeError, match="max_image_bytes"):
        resolve_images(prompt(big), "prompt", small, counter)
    for bad in (0, -100_000):  # a negative count could cancel text tokens in the limit check
        with pytest.raises(ValidationError, match="expected_tokens"):
            ImageChunk(data=b"x", format="png", expected_tokens=bad)
        with pytest.raises(ValidationError, match="expected_tokens"):
            ImageAssetPointerChunk(location="a.png", format="png", expected_tokens=bad)


def test_pointers_read_only_allowed_places(counter: ImageProcessor, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    (assets / "colors").mkdir(parents=True)
    (assets / "colors" / "red.png").write_bytes(image_bytes("red"))
    (tmp_path / "secret.png").write_bytes(image_bytes("blue"))
    source = ImageSource(ImagesConfig(assets_dir=str(assets)), None)
    for location in ("colors/red.png", "file:colors/red.png", "/colors/red.png"):
        got = resolve_images(
            prompt(ImageAssetPointerChunk(location=location, format="png")), "p", source, counter
        )
        assert got.chunks[0] == ImageChunk(data=image_bytes("red"), format="png", expected_tokens=4)
    refused = {
        "../secret.png": "no such asset",
        "colors/../../secret.png": "no such asset",
        "colors/none.png": "no such asset",
        "s3://bucket/red.png": "reads no images from",
        "http://127.0.0.1:1/red.png": "reads no images from",
    }
    for location, words in refused.items():
        chunk = ImageAssetPointerChunk(location=location, format="png")
        with pytest.raises(UserInputError, match=words):
            resolve_images(prompt(chunk), "p", source, counter)
    nowhere = ImageSource(ImagesConfig(), None)
    with pytest.raises(UserInputError, match="reads no images from"):
        chunk = ImageAssetPointerChunk(location="colors/red.png", format="png")
        resolve_images(prompt(chunk), "p", nowhere, counter)


def test_image_locations_in_the_config_are_checked() -> None:
    s3 = {"backend": "s3", "bucket": "b", "prefix": "ckpt", "endpoint_url": "http://s3"}
    base = {"models": [{"name": "m", "source": "/m"}]}
    ok = parse_config({**base, "storage": s3, "images": {"s3_prefixes": ["s3://b/assets/"]}})
    assert ok.images.s3_prefixes == ["s3://b/assets/"]
    for storage, prefixes, words in [
        ({}, ["s3://b/assets/"], "needs storage.backend: s3"),
        (s3, ["s3://b/"], "overlaps the checkpoint archives"),
        (s3, ["s3://b/ckpt/tenant-a/"], "overlaps the checkpoint archives"),
        (s3, ["https://b/"], "is not s3://bucket/prefix/"),
    ]:
        raw = {**base, "storage": storage, "images": {"s3_prefixes": prefixes}}
        with pytest.raises(ConfigurationError, match=words):
            parse_config(raw)


def test_torchvision_imports_beside_the_cpu_torch() -> None:
    """`make install` installs torchvision and the .pth that lets it import in every process of
    the environment (here a fresh interpreter): its transforms work, peft imports beside it, and
    the nms operator it declares has a CPU kernel."""
    script = (
        "import torch, torchvision\n"
        "from torchvision.transforms.v2 import functional as F\n"
        "import peft\n"
        "boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])\n"
        "keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()\n"
        "print(tuple(F.resize(torch.rand(3, 32, 32), [16, 16]).shape), keep)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 16, 16) [0, 2]"
