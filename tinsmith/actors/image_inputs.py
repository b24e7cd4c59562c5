"""A vision model's image processor, one piece for every side that needs it: the API server
measures an image's tokens with it (``count``), a trainer rank turns a micro-batch's images into
the model's pixel inputs (``ImageInputs``), and both trainer and sampler decode images the same
way (``decode``). It is the processor vLLM loads from the same directory."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from tinsmith.errors import UserInputError
from tinsmith.types.data import ImagePlacement

if TYPE_CHECKING:
    import torch
    from PIL import Image


class _QwenVLImageProcessor(Protocol):
    merge_size: int

    def __call__(
        self, images: list[Image.Image], return_tensors: str
    ) -> dict[str, torch.Tensor]: ...

    def get_number_of_image_patches(
        self, height: int, width: int, images_kwargs: dict[str, object]
    ) -> int: ...


def decode(images: list[ImagePlacement]) -> list[Image.Image]:
    """The images as RGB pictures, in order."""
    from PIL import Image

    return [Image.open(io.BytesIO(p.data)).convert("RGB") for p in images]


class ImageProcessor:
    """A model directory's Qwen-VL image processor, loaded on first use (from any thread)."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = str(model_dir)
        self._processor: _QwenVLImageProcessor | None = None
        self._lock = threading.Lock()

    def get(self) -> _QwenVLImageProcessor:
        with self._lock:
            if self._processor is None:
                from transformers import AutoImageProcessor

                self._processor = cast(
                    _QwenVLImageProcessor, AutoImageProcessor.from_pretrained(self.model_dir)
                )
            return self._processor

    def count(self, height: int, width: int) -> int:
        """Tokens an image of this size takes (the count the cookbook's ``image_to_chunk``
        computes, and the one vLLM and the trainer produce)."""
        proc = self.get()
        patches = proc.get_number_of_image_patches(height, width, images_kwargs={})
        return int(patches) // int(proc.merge_size) ** 2


class ImageInputs:
    """``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids`` of a micro-batch's images."""

    def __init__(self, model_dir: str, image_token_id: int) -> None:
        self.processor = ImageProcessor(model_dir)
        self.image_token_id = image_token_id

    def __call__(
        self, images: list[ImagePlacement], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``images`` (in order, as their placeholders are in
        ``input_ids``): pixels, each image's patch grid, and which tokens are image tokens (for
        the multimodal rotary positions)."""
        proc = self.processor.get()
        out = proc(images=decode(images), return_tensors="pt")
        grid = out["image_grid_thw"]
        merge = int(proc.merge_size)
        for placement, thw in zip(images, grid, strict=True):
            tokens = int(thw.prod()) // merge**2
            if tokens != placement.tokens:
                raise UserInputError(
                    f"an image takes {tokens} tokens here but was measured at {placement.tokens}"
                )
        return {
            "pixel_values": out["pixel_values"],
            "image_grid_thw": grid,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }
