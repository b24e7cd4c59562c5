"""Serving an adapter by folding it into the base weights: for models whose LoRA the device's
vLLM cannot run (vLLM 0.32's CPU MoE kernel has no LoRA, and with ``enable_lora`` every MoE layer
goes to its CUDA-only Triton kernel).

The sampler then serves one weights version at a time, and switching restarts the engine on the
merged weights. (vLLM 0.32's in-place ``reload_weights`` is not used: on its CPU build it leaves a
MoE layer's fused expert weights in checkpoint layout instead of the layout its kernel was given
at start-up, and the reloaded model computes something else - measured: logprobs off by 0.03 even
reloading the unchanged base.) peft does the merge, so what is served is exactly what the
trainer's LoRA computes (up to fp32 rounding); the merge runs on a fresh copy of the base, which
is never modified.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.errors import NotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class MergedWeights:
    """The directories a merged-mode sampler's engine loads: the base model, and base + adapter
    for each version it switches to."""

    def __init__(self, model_dir: str, work_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.work_dir = work_dir
        self._versions = 0

    def base_dir(self) -> str:
        """The base model as the engine serves it, its unembedding untied from the embedding, so
        a LoRA on ``lm_head`` (Tinker's ``train_unembed``) folds into the output layer only, as
        it acts in training."""
        target = self.work_dir / "base"
        if not (target / "config.json").exists():
            config = json.loads((self.model_dir / "config.json").read_text())
            if not _tied(config):
                return str(self.model_dir)
            model = self._load(self.model_dir)
            head = model.get_output_embeddings()
            head.weight = type(head.weight)(head.weight.detach().clone(), requires_grad=False)
            _set_untied(model.config)
            self._save(model, target)
        return str(target)

    def merge(self, adapter_dir: str) -> str:
        """A new directory holding base + adapter (peft's ``merge_and_unload``); the previous
        version's directory is removed (the engine has already switched away from it)."""
        from peft import PeftModel

        model = self._load(Path(self.base_dir()))
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        assert isinstance(merged, type(model))
        self._versions += 1
        target = self.work_dir / f"v{self._versions}"
        self._save(merged, target)
        old = self.work_dir / f"v{self._versions - 2}"
        shutil.rmtree(old, ignore_errors=True)
        return str(target)

    def _load(self, directory: Path) -> PreTrainedModel:
        import torch

        from tinsmith.actors.rank_setup import auto_model_class
        from tinsmith.types.architectures import read_model_shape

        auto = auto_model_class(read_model_shape(directory).arch)
        return auto.from_pretrained(str(directory), dtype=torch.float32)

    def _save(self, model: PreTrainedModel, target: Path) -> None:
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(
            str(tmp), safe_serialization=True
        )  # the engine's tokenizer: model_dir
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)


def _tied(config: dict[str, object]) -> bool:
    text = config.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return bool(config.get("tie_word_embeddings", False))


def _set_untied(config: object) -> None:
    config.tie_word_embeddings = False  # type: ignore[attr-defined]
    text = getattr(config, "text_config", None)
    if text is not None:
        text.tie_word_embeddings = False


class MergedServing:
    """A merged-mode sampler's weights versions: requests of the version the engine holds run
    together; a request for another one waits until those finish, then the engine restarts on
    its weights (requests arriving for the old version meanwhile wait too, so a switch is never
    starved)."""

    def __init__(self, weights: MergedWeights) -> None:
        import asyncio

        self.weights = weights
        self.adapters: dict[str, str] = {}  # adapter key -> its peft directory
        self._current: str | None = None  # None: the base model
        self._inflight = 0
        self._waiting: dict[str | None, int] = {}
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def serving(
        self, key: str | None, restart: Callable[[str], Awaitable[None]]
    ) -> AsyncIterator[None]:
        """Hold the engine on ``key``'s weights for one request; ``restart(directory)`` puts
        the engine on other weights."""
        if key is not None and key not in self.adapters:
            raise NotFoundError(f"adapter {key!r} is not loaded on this sampler")
        async with self._cond:
            self._waiting[key] = self._waiting.get(key, 0) + 1
            try:
                await self._cond.wait_for(lambda: self._may_enter(key))
            finally:
                self._waiting[key] -= 1
            if key != self._current:
                await self._switch(key, restart)
            self._inflight += 1
        try:
            yield
        finally:
            async with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def _may_enter(self, key: str | None) -> bool:
        if key == self._current:  # join, unless another version waits for its turn
            return not any(n for k, n in self._waiting.items() if k != key)
        return self._inflight == 0

    async def _switch(self, key: str | None, restart: Callable[[str], Awaitable[None]]) -> None:
        import asyncio

        if key is None:
            path = self.weights.base_dir()
        else:
            path = await asyncio.to_thread(self.weights.merge, self.adapters[key])
        await restart(path)
        self._current = key
