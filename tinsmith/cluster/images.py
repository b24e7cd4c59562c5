"""Images in requests: read what an ``ImageAssetPointerChunk`` points to, check every image and
measure how many tokens it takes, so that the coordinator, the trainer and the sampler only ever
see inline images (``ImageChunk``) whose ``expected_tokens`` is exact.

Blocking (object store reads, image decoding): the routes call ``resolve_images`` in a thread.
Where a pointer may point is the operator's choice (``images:`` in the config): files under
``assets_dir``, objects under listed ``s3://`` prefixes (read with the storage's endpoint and
credentials), URLs under listed prefixes. Anything else is refused, so a request cannot make the
server read its own checkpoints, files or internal network.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tinsmith.cluster.config import ImagesConfig, LimitsConfig
from tinsmith.cluster.limits import check_forward_backward
from tinsmith.errors import TooLargeError, UserInputError
from tinsmith.storage.base import StorageError
from tinsmith.types.data import ImageAssetPointerChunk, ImageChunk, ModelInput
from tinsmith.types.training import ForwardBackwardInput

if TYPE_CHECKING:
    from PIL import Image


class ObjectReader(Protocol):
    """Reads one object of the storage's S3 endpoint (``S3Storage.read_object``)."""

    def read_object(self, bucket: str, key: str, max_bytes: int) -> bytes: ...


class ImageTokenCounter(Protocol):
    """What ``resolve_images`` needs of a model's image processor."""

    def count(self, height: int, width: int) -> int: ...


class ImageSource:
    """Reads the bytes of an ``ImageAssetPointerChunk`` from an allowed location."""

    def __init__(self, config: ImagesConfig, objects: ObjectReader | None) -> None:
        self.config = config
        self.objects = objects

    def read(self, location: str, where: str) -> bytes:
        limit = self.config.max_image_bytes
        if location.startswith("s3://"):
            return self._s3(location, where, limit)
        if location.startswith(("http://", "https://")):
            return self._url(location, where, limit)
        return self._file(location, where, limit)

    def _s3(self, location: str, where: str, limit: int) -> bytes:
        allowed = any(location.startswith(p) for p in self.config.s3_prefixes)
        if not allowed or self.objects is None:
            raise UserInputError(f"{where}.location: this server reads no images from {location!r}")
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if not key or ".." in key.split("/"):
            raise UserInputError(f"{where}.location {location!r} names no object")
        try:
            return self.objects.read_object(bucket, key, limit)
        except FileNotFoundError:
            raise UserInputError(f"{where}.location {location!r}: no such object") from None
        except ValueError as exc:
            raise TooLargeError(f"{where}.location {location!r}: {exc}") from None
        except StorageError as exc:
            raise UserInputError(f"{where}.location {location!r} is unreadable: {exc}") from None

    def _url(self, location: str, where: str, limit: int) -> bytes:
        if not any(location.startswith(p) for p in self.config.url_prefixes):
            raise UserInputError(f"{where}.location: this server reads no images from {location!r}")
        try:
            with urllib.request.urlopen(location, timeout=self.config.fetch_timeout_seconds) as r:
                data: bytes = r.read(limit + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise UserInputError(f"{where}.location {location!r} is unreadable: {exc}") from None
        if len(data) > limit:
            raise TooLargeError(f"{where}.location {location!r} is over {limit} bytes")
        return data

    def _file(self, location: str, where: str, limit: int) -> bytes:
        if self.config.assets_dir is None:
            raise UserInputError(f"{where}.location: this server reads no images from {location!r}")
        root = Path(self.config.assets_dir).resolve()
        path = (root / location.removeprefix("file:").lstrip("/")).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise UserInputError(f"{where}.location {location!r}: no such asset")
        if path.stat().st_size > limit:
            raise TooLargeError(f"{where}.location {location!r} is over {limit} bytes")
        return path.read_bytes()


def _open(data: bytes, fmt: str, where: str, max_pixels: int) -> Image.Image:
    """The decoded image; refuses what is not a ``fmt`` image, or is larger than ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"{where}.data is not a PNG or JPEG image ({exc})") from None
    if image.format != fmt.upper():
        raise UserInputError(
            f"{where}.format is {fmt!r} but the data is a {str(image.format).lower()} image"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise TooLargeError(
            f"{where} is {width}x{height} pixels; images.max_image_pixels is {max_pixels}"
        )
    try:
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise UserInputError(f"{where}.data is not a readable {fmt} image ({exc})") from None
    return image


def measure(chunk: ImageChunk, counter: ImageTokenCounter, max_pixels: int, where: str) -> int:
    """The tokens ``chunk`` takes; it must decode, and agree with its ``expected_tokens``."""
    image = _open(chunk.data, chunk.format, where, max_pixels)
    width, height = image.size
    try:
        tokens = counter.count(height, width)
    except ValueError as exc:  # e.g. an aspect ratio over 200
        raise UserInputError(f"{where}: {exc}") from None
    if chunk.expected_tokens is not None and chunk.expected_tokens != tokens:
        raise UserInputError(
            f"{where}.expected_tokens is {chunk.expected_tokens}, but this {width}x{height} image "
            f"takes {tokens} tokens"
        )
    return tokens


def resolve_images(
    model_input: ModelInput,
    where: str,
    source: ImageSource,
    counter: ImageTokenCounter | None,
) -> ModelInput:
    """``model_input`` with every image inline and measured; ``counter`` None: a model that
    takes no images. Errors name the chunk (``{where}.chunks[i]``) and the reason."""
    if not model_input.images:
        return model_input
    if counter is None:
        raise UserInputError(f"{where} has images, but this model takes text only")
    chunks = list(model_input.chunks)
    for i, chunk in enumerate(chunks):
        at = f"{where}.chunks[{i}]"
        if isinstance(chunk, ImageAssetPointerChunk):
            data = source.read(chunk.location, at)
            expected = chunk.expected_tokens
            chunk = ImageChunk(data=data, format=chunk.format, expected_tokens=expected)
        if isinstance(chunk, ImageChunk):
            if len(chunk.data) > source.config.max_image_bytes:
                raise TooLargeError(
                    f"{at}.data is {len(chunk.data)} bytes; images.max_image_bytes is "
                    f"{source.config.max_image_bytes}"
                )
            tokens = measure(chunk, counter, source.config.max_image_pixels, at)
            chunks[i] = chunk.model_copy(update={"expected_tokens": tokens})
    return ModelInput(chunks=chunks)


def read_datum_images(
    fb: ForwardBackwardInput,
    source: ImageSource,
    counter: ImageTokenCounter | None,
    limits: LimitsConfig,
) -> ForwardBackwardInput:
    """``fb`` with every datum's images read and measured, checked against the token limit again
    (now that images count what they take)."""
    check_image_count([d.model_input for d in fb.data], source.config, "forward_backward_input")
    data = [
        d.model_copy(
            update={
                "model_input": resolve_images(
                    d.model_input, f"forward_backward_input.data[{i}].model_input", source, counter
                )
            }
        )
        for i, d in enumerate(fb.data)
    ]
    out = fb.model_copy(update={"data": data})
    check_forward_backward(out, limits)
    return out


def check_image_count(inputs: list[ModelInput], config: ImagesConfig, where: str) -> None:
    """At most ``images.max_images_per_request`` images in one request, before any is read."""
    count = sum(len(m.images) for m in inputs)
    if count > config.max_images_per_request:
        raise TooLargeError(
            f"{where} has {count} images; images.max_images_per_request is "
            f"{config.max_images_per_request}"
        )
