"""What tinsmith knows of each model family it serves: how to load it, where its LoRA goes.

A model directory's ``config.json`` names its family (``model_type``); everything that differs
between families - the transformers class that loads it, the module names a LoRA with
``train_attn`` / ``train_mlp`` / ``train_unembed`` adapts, where MoE experts and the vision tower
are - is looked up here, so the trainer, the sampler and the server agree on it. Plain data: no
torch, no transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tinsmith.errors import ConfigurationError

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)
# What a client's AutoTokenizer / AutoProcessor reads of a model directory (never the weights):
# copied into the local Hugging Face cache by `tinsmith prepare` and served under /hf.
TOKENIZER_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


class Architecture(BaseModel):
    """One model family, as the trainer, sampler and server treat it."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    """``config.json``'s ``model_type``; also what ``get_info`` reports as ``arch``."""
    auto_class: Literal["causal_lm", "image_text_to_text"] = "causal_lm"
    """The transformers auto class that loads it (``AutoModelFor...``)."""
    text_config_key: str | None = None
    """Where the language model's settings are in ``config.json`` (None: at the top level)."""
    language_model_prefix: str = ""
    """A regex every language-model LoRA target's module path must match, so a LoRA never lands
    on a vision tower whose modules share names with the language model's."""
    experts: tuple[str, ...] = ()
    """MoE: the fused 3-D expert parameters (per layer) that ``train_mlp`` trains."""
    vision: bool = False
    """Takes images (``ImageChunk``) in its prompts."""

    @property
    def moe(self) -> bool:
        return bool(self.experts)


_FAMILIES = {
    arch.model_type: arch
    for arch in (
        Architecture(model_type="llama"),
        Architecture(model_type="qwen2"),
        Architecture(model_type="qwen3"),
        Architecture(model_type="qwen3_moe", experts=("gate_up_proj", "down_proj")),
        Architecture(
            model_type="qwen3_vl",
            auto_class="image_text_to_text",
            text_config_key="text_config",
            language_model_prefix=r"model\.language_model\.",
            vision=True,
        ),
    )
}


def architecture(model_type: str) -> Architecture:
    """The family of a ``model_type``; an unknown one is a configuration error naming those
    served."""
    try:
        return _FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise ConfigurationError(
            f"model_type {model_type!r} is not a family tinsmith serves (served: {known})"
        ) from None


class ModelShape(BaseModel):
    """What the server needs of a model directory's ``config.json``."""

    model_config = ConfigDict(frozen=True)

    arch: Architecture
    vocab_size: int
    image_token_id: int | None = None


def read_model_shape(model_dir: Path) -> ModelShape:
    """Read ``config.json``: the family, and the vocabulary size wherever the family keeps it."""
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{model_dir}: no readable config.json ({exc})") from exc
    arch = architecture(str(raw.get("model_type")))
    text = raw.get(arch.text_config_key, {}) if arch.text_config_key else raw
    vocab = text.get("vocab_size", raw.get("vocab_size"))
    if not isinstance(vocab, int):
        raise ConfigurationError(f"{model_dir}/config.json: no vocab_size")
    image_token = raw.get("image_token_id") if arch.vision else None
    return ModelShape(arch=arch, vocab_size=vocab, image_token_id=image_token)
