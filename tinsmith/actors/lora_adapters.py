"""The rank's base model and the peft LoRA adapters on it, one per training client.

Every adapter lives in one shared peft model over the one base model. Each is trained through a
DeepSpeed engine of its own (``adapter_engine``) over an ``AdapterView``: a module that holds
only that adapter's LoRA layers, so the engine never touches the base weights or another
tenant's adapter.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tinsmith.actors.activation_memory import (
    checkpointable_layers,
    set_checkpointing,
    target_logprobs,
)
from tinsmith.actors.segment_attention import Segments
from tinsmith.errors import UserInputError
from tinsmith.types.architectures import ATTN_MODULES, MLP_MODULES, UNEMBED_MODULES, Architecture
from tinsmith.types.training import LoraConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

LORA_ALPHA = 32


class LoraTargets(NamedTuple):
    """What peft adapts for one ``LoraConfig`` on one family: modules (a list of name suffixes,
    or one regex over full module paths), and MoE's fused expert parameters."""

    modules: list[str] | str
    parameters: list[str]


def lora_targets(arch: Architecture, lora: LoraConfig) -> LoraTargets:
    """``train_attn`` / ``train_mlp`` / ``train_unembed`` on this family: the attention
    projections, the MLP (on a MoE, every expert), the unembedding (``lm_head``)."""
    modules: list[str] = []
    parameters: list[str] = []
    if lora.train_attn:
        modules += ATTN_MODULES
    if lora.train_mlp:
        if arch.moe:
            parameters += [f"mlp.experts.{name}" for name in arch.experts]
        else:
            modules += MLP_MODULES
    if not arch.language_model_prefix:
        return LoraTargets(
            modules + (list(UNEMBED_MODULES) if lora.train_unembed else []), parameters
        )
    # A vision model's tower has modules of the same names: adapt the language model's only.
    alternatives = [rf"{arch.language_model_prefix}.*\.({'|'.join(modules)})"] if modules else []
    alternatives += list(UNEMBED_MODULES) if lora.train_unembed else []
    return LoraTargets("|".join(f"(?:{a})" for a in alternatives), parameters)


class LoraAdapters:
    """The frozen base model and the peft model that carries every adapter of this rank.

    peft wraps the base model when the first adapter arrives and is taken off again when the last
    one leaves, so a rank without adapters holds the bare base model."""

    def __init__(self, base: torch.nn.Module, arch: Architecture) -> None:
        self.base = base
        self.arch = arch
        self.peft: PeftModel | None = None

    def add(self, name: str, lora: LoraConfig) -> list[torch.nn.Parameter]:
        """Add an adapter, initialised from the config's seed; returns its trainable parameters."""
        import torch
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if not (lora.train_attn or lora.train_mlp or lora.train_unembed):
            raise UserInputError(
                "lora_config trains nothing: set train_attn, train_mlp or train_unembed"
            )
        targets = lora_targets(self.arch, lora)
        peft_cfg = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules=targets.modules or None,
            target_parameters=targets.parameters or None,
            bias="none",
        )
        torch.manual_seed(lora.seed if lora.seed is not None else 0)
        if self.peft is None:
            self.peft = get_peft_model(self.base, peft_cfg, adapter_name=name)
        else:
            self.peft.add_adapter(name, peft_cfg)
        params = self.params(name)
        for p in params:
            p.requires_grad_(True)
        try:
            check_built(self.named_params(name), self.arch, lora, self._num_experts())
        except UserInputError:
            self.remove(name)
            raise
        return params

    def _num_experts(self) -> int:
        config = self.base.config
        text = getattr(config, self.arch.text_config_key) if self.arch.text_config_key else config
        return int(getattr(text, "num_experts", 1) or 1)

    def remove(self, name: str) -> None:
        """Take an adapter's layers out of the peft model (the last one: back to the bare base)."""
        if self.peft is None or name not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) > 1:
            if self.peft.active_adapter == name:
                self.peft.set_adapter(next(n for n in self.peft.peft_config if n != name))
            self.peft.delete_adapter(name)
        else:
            self.base = self.peft.unload()
            self.peft = None

    def named_params(self, name: str) -> dict[str, torch.nn.Parameter]:
        """This adapter's parameters under peft's saved names (adapter name removed)."""
        assert self.peft is not None
        marker = f".{name}."
        return {n.replace(marker, "."): p for n, p in self.peft.named_parameters() if marker in n}

    def params(self, name: str) -> list[torch.nn.Parameter]:
        """This adapter's parameters, in peft's order."""
        return list(self.named_params(name).values())

    def activate(self, name: str) -> None:
        """Make the adapter peft's active (and only trainable) one: before its forward, and
        before reading or setting its optimizer state (ZeRO-3 skips parameters that do not
        require grad)."""
        assert self.peft is not None
        if self.peft.active_adapter != name:
            self.peft.set_adapter(name)
        # peft's set_adapter toggles requires_grad; keep only this adapter trainable
        for p in self.params(name):
            p.requires_grad_(True)

    def view(self, name: str) -> torch.nn.Module:
        """The module the adapter's DeepSpeed engine wraps (see ``AdapterView``)."""
        assert self.peft is not None
        return _view_class()(self.peft, name)

    def config_json(self, name: str) -> bytes:
        """peft's own ``adapter_config.json`` for the adapter."""
        assert self.peft is not None
        with tempfile.TemporaryDirectory() as tmp:
            self.peft.peft_config[name].save_pretrained(tmp)
            return (Path(tmp) / "adapter_config.json").read_bytes()

    def tensors(self, name: str, zero3: bool) -> dict[str, torch.Tensor]:
        """The adapter's weights under peft's saved names, on the CPU. Taken from its parameters
        directly: peft's ``get_peft_model_state_dict`` walks the whole model's state dict, which
        cost more than the rest of a weight sync's export. Under ZeRO-3 the parameters are
        partitioned and gathering them is a collective: every rank must call this together."""
        import deepspeed

        params = self.named_params(name)
        with deepspeed.zero.GatheredParameters(list(params.values()), enabled=zero3):
            # a copy under ZeRO-3: the gathered storage is released on leaving the block
            tensors = {n: p.detach().cpu() for n, p in params.items()}
            return {n: t.clone() if zero3 else t.contiguous() for n, t in tensors.items()}


@functools.cache
def _view_class() -> type[torch.nn.Module]:
    import torch

    class AdapterView(torch.nn.Module):
        """The module an adapter's DeepSpeed engine wraps: the adapter's own LoRA layers only.

        The shared peft model is held outside the module tree, so each engine sees (broadcasts,
        all-reduces, and under ZeRO-3 partitions and gathers) its adapter's parameters and never
        the base weights or another tenant's adapter. ZeRO-3's hooks sit on the LoRA layers and fire
        when peft calls them inside the shared model's forward.
        """

        def __init__(self, peft_model: PeftModel, adapter_id: str) -> None:
            super().__init__()
            self.shared = (peft_model,)  # a tuple: not registered as a submodule
            self.adapter_id = adapter_id
            suffix = f".{adapter_id}"
            self.lora = torch.nn.ModuleList(
                m
                for n, m in peft_model.named_modules()
                if n.endswith(suffix) and next(m.parameters(recurse=False), None) is not None
            )
            self.layers = checkpointable_layers(peft_model)

        def forward(
            self,
            input_ids: torch.Tensor,
            targets: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            segments: Segments | None = None,
            checkpoint: bool = False,
            logit_chunks: int = 1,
            **images: torch.Tensor,
        ) -> torch.Tensor:
            """Target logprobs ``(B, T)`` in fp32. ``segments``: a packed row's datums (with
            ``position_ids`` restarting at each); ``checkpoint``: recompute the layers in the
            backward; ``logit_chunks``: see ``target_logprobs``; ``images``: a vision model's
            pixel inputs (``image_inputs``), if any."""
            # the families served here all keep the decoder in .model and the unembedding in
            # .lm_head (which peft wraps when train_unembed), applied without scaling
            causal = self.shared[0].get_base_model()
            set_checkpointing(self.layers, checkpoint)
            packed = {"segments": segments} if segments is not None else {}
            hidden = causal.get_submodule("model")(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **packed,
                **images,
            ).last_hidden_state
            head = causal.get_submodule("lm_head")
            return target_logprobs(head, hidden, targets, logit_chunks)

    return AdapterView


def check_built(
    params: dict[str, torch.nn.Parameter], arch: Architecture, lora: LoraConfig, num_experts: int
) -> None:
    """What peft built is what the client asked for: each switch adapted something, and every
    LoRA has the requested rank (peft may silently rebuild MoE targets, e.g. fused at rank 2r).
    A piece this model cannot adapt is the client's error, named; never a silent skip."""
    wanted = {
        "train_attn": (lora.train_attn, ATTN_MODULES),
        "train_mlp": (lora.train_mlp, ("experts",) if arch.moe else MLP_MODULES),
        "train_unembed": (lora.train_unembed, UNEMBED_MODULES),
    }
    for switch, (on, names) in wanted.items():
        if on and not any(f".{m}." in n or n.startswith(f"{m}.") for n in params for m in names):
            raise UserInputError(
                f"lora_config.{switch}: this {arch.model_type} model has no "
                f"{'/'.join(names)} layers a LoRA can adapt"
            )
    for n, p in params.items():
        rows = p.shape[0] if ".lora_A." in n else p.shape[-1]
        expected = lora.rank * (num_experts if ".experts." in n else 1)
        if rows != expected:
            raise UserInputError(
                f"lora_config.rank: {n} would be built with {rows} LoRA rows, not the "
                f"{expected} rank {lora.rank} means here; this model cannot train it as asked"
            )
