"""A trainer rank's process set-up: thread budget, torch.distributed rendezvous, the base model.

Ray starts workers with ``OMP_NUM_THREADS=1``; the rank's real thread budget must be in the
environment before torch is first imported, so ``start_rank`` runs before anything else touches
torch in the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.actors import gloo_device, segment_attention
from tinsmith.types.architectures import Architecture, read_model_shape
from tinsmith.types.settings import TrainerConfig

if TYPE_CHECKING:
    import torch
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

log = logging.getLogger(__name__)


@dataclass
class RankRuntime:
    """What a started rank computes on: its device and dtype, and the frozen base model there."""

    device: torch.device
    dtype: torch.dtype
    base: torch.nn.Module
    arch: Architecture
    image_token_id: int | None  # a vision model's image placeholder


def start_rank(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    model_dir: str,
    config: TrainerConfig,
) -> RankRuntime:
    """Set threads and the rendezvous environment, join torch.distributed (NCCL on a GPU, gloo
    otherwise) and load the base model (by its family's transformers class), frozen, onto the
    rank's device."""
    threads = config.torch_threads or max(1, (os.cpu_count() or 1) // world_size)
    # Ray starts workers with OMP_NUM_THREADS=1; torch is not imported yet, so set the real
    # budget first.
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK="0",
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR=master_addr,
        # A lone rank hosts its own store on a port the kernel gives it at bind time: the port
        # found free before the process started can be taken by then.
        MASTER_PORT=str(master_port if world_size > 1 else 0),
    )
    import torch

    torch.set_num_threads(threads)
    import deepspeed

    gloo_device.install()  # one 100 Hz gloo loop thread, not one per group

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    dtype = torch.float32 if config.dtype == "float32" else torch.bfloat16
    shape = read_model_shape(Path(model_dir))
    arch = shape.arch
    # Text models take packed rows (segment_attention); a vision model's positions are its own.
    attention = segment_attention.register() if arch.auto_class == "causal_lm" else None
    model = auto_model_class(arch).from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attention
    )
    model.requires_grad_(False)
    model.config.use_cache = False
    model.to(device)
    log.info("trainer rank %d/%d ready (%s, %d threads)", rank, world_size, backend, threads)
    return RankRuntime(
        device=device, dtype=dtype, base=model, arch=arch, image_token_id=shape.image_token_id
    )


def auto_model_class(arch: Architecture) -> type[_BaseAutoModelClass]:
    """The transformers auto class that loads (or builds) a model of this family."""
    import transformers

    return {
        "causal_lm": transformers.AutoModelForCausalLM,
        "image_text_to_text": transformers.AutoModelForImageTextToText,
    }[arch.auto_class]
