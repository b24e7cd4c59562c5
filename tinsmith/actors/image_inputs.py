"""A vision model's pixel inputs for a micro-batch: its datums' images through the model's own
image processor (the one vLLM uses too), checked against the token counts the API server
measured."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Protocol, cast

from tinsmith.errors import UserInputError
from tinsmith.types.data import ImagePlacement

if TYPE_CHECKING:
    import torch
    from PIL import Image


class _Processor(Protocol):
    merge_size: int

    def __call__(
        self, images: list[Image.Image], return_tensors: str
    ) -> dict[str, torch.Tensor]: ...


class ImageInputs:
    """``pixel_values`` and ``image_grid_thw`` of a model directory's Qwen-VL image processor;
    the processor is loaded on first use."""

    def __init__(self, model_dir: str, image_token_id: int) -> None:
        self.model_dir = model_dir
        self.image_token_id = image_token_id
        self._processor: _Processor | None = None

    def __call__(
        self, images: list[ImagePlacement], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``images`` (in order, as their placeholders are in
        ``input_ids``): pixels, each image's patch grid, and which tokens are image tokens (for
        the multimodal rotary positions)."""
        from PIL import Image

        if self._processor is None:
            from transformers import AutoImageProcessor

            self._processor = cast(_Processor, AutoImageProcessor.from_pretrained(self.model_dir))
        proc = self._processor
        pil = [Image.open(io.BytesIO(p.data)).convert("RGB") for p in images]
        out = proc(images=pil, return_tensors="pt")
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
