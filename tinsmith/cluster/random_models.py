"""Models with random weights, built from an architecture config: no hub, no download.

A ``random:<file>`` model source names a YAML file (``configs/models/``) holding a Hugging Face
``config.json``, a seed, and the model source whose tokenizer it borrows. ``tinsmith prepare``
draws the weights from the seed once and writes an ordinary model directory (config, safetensors,
tokenizer, image-processor config), so the trainer, vLLM and the tests load it like any other:
every family can be tested on a CPU, and benchmarks can run at a real model's shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinsmith.actors.rank_setup import auto_model_class
from tinsmith.errors import ConfigurationError
from tinsmith.types.architectures import architecture

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
READY_MARKER = ".tinsmith-ready"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RandomModelFile(BaseModel):
    """The YAML a ``random:`` source names."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(description="The model source whose tokenizer this model uses.")
    seed: int = Field(default=0, description="Seed the weights are drawn from.")
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Saved dtype.")
    added_special_tokens: list[str] = Field(
        default_factory=list, description="Special tokens appended to the borrowed tokenizer."
    )
    token_ids: dict[str, str] = Field(
        default_factory=dict,
        description="config.json fields set to a token's id, e.g. image_token_id: <|image_pad|>.",
    )
    config: dict[str, object] = Field(description="The Hugging Face config.json (model_type set).")
    processor: dict[str, object] | None = Field(
        default=None, description="preprocessor_config.json, for a model that takes images."
    )


def resolve_spec_file(source: str) -> Path:
    """The file a ``random:`` source names: as given, else relative to the project."""
    path = Path(source[len(RANDOM_PREFIX) :]).expanduser()
    for candidate in (path, PROJECT_ROOT / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigurationError(f"model source {source!r}: no such file (looked in . and the project)")


def load_spec_file(path: Path) -> RandomModelFile:
    """Read and validate a ``random:`` file; errors name the file and the field."""
    try:
        return RandomModelFile.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigurationError(f"random model file {path}: {exc}") from exc


def random_model_dir(source: str, cache_dir: Path) -> Path:
    """Where a ``random:`` model is prepared: named after its file and a digest of its content,
    so an edited file gets a new directory instead of stale weights."""
    path = resolve_spec_file(source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return cache_dir / "random" / f"{path.stem}-{digest}"


def build_random_model(source: str, target: Path, tokenizer_dir: Path) -> None:
    """Draw the weights and write a complete model directory at ``target`` (atomically)."""
    import torch
    import transformers

    spec = load_spec_file(resolve_spec_file(source))
    arch = architecture(str(spec.config.get("model_type")))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if spec.added_special_tokens:
        tokens = [transformers.AddedToken(t, special=True) for t in spec.added_special_tokens]
        tokenizer.add_tokens(tokens, special_tokens=True)
    raw = dict(spec.config)
    for field, token in spec.token_ids.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ConfigurationError(f"{source}: token_ids.{field}: {token!r} is not a token")
        raw[field] = token_id
    config = transformers.AutoConfig.for_model(**raw)  # type: ignore[arg-type]
    text = getattr(config, arch.text_config_key) if arch.text_config_key else config
    if text.vocab_size < len(tokenizer):
        raise ConfigurationError(
            f"{source}: config vocab_size {text.vocab_size} < the tokenizer's {len(tokenizer)}"
        )
    auto = auto_model_class(arch)
    torch.manual_seed(spec.seed)
    dtype = torch.float32 if spec.dtype == "float32" else torch.bfloat16
    model = auto.from_config(config, dtype=dtype)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if spec.processor is not None:
        (tmp / "preprocessor_config.json").write_text(json.dumps(spec.processor, indent=2))
    params = sum(p.numel() for p in model.parameters())
    (tmp / READY_MARKER).write_text(f"{source} seed={spec.seed} params={params}\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    log.info("built %s (%d parameters, seed %d) into %s", source, params, spec.seed, target)
