"""A trainer rank's process set-up: thread budget, torch.distributed rendezvous, the base model.

Ray starts workers with ``OMP_NUM_THREADS=1``; the rank's real thread budget must be in the
environment before torch is first imported, so ``start_rank`` runs before anything else touches
torch in the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinsmith.types.settings import TrainerConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class RankRuntime:
    """What a started rank computes on: its device and dtype, and the frozen base model there."""

    device: torch.device
    dtype: torch.dtype
    base: torch.nn.Module


def start_rank(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    model_dir: str,
    config: TrainerConfig,
) -> RankRuntime:
    """Set threads and the rendezvous environment, join torch.distributed (NCCL on a GPU, gloo
    otherwise) and load the base model, frozen, onto the rank's device."""
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
        MASTER_PORT=str(master_port),
    )
    import torch

    torch.set_num_threads(threads)
    import deepspeed
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    dtype = torch.float32 if config.dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.requires_grad_(False)
    model.config.use_cache = False
    model.to(device)  # type: ignore[arg-type]
    log.info("trainer rank %d/%d ready (%s, %d threads)", rank, world_size, backend, threads)
    return RankRuntime(device=device, dtype=dtype, base=model)
