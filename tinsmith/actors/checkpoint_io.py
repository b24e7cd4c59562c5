"""An adapter's state as files and bytes: peft directories, checkpoint archives, snapshots.

* a peft directory (``adapter_config.json`` + ``adapter_model.safetensors``) that vLLM and
  ``PeftModel.from_pretrained`` load, written where samplers read it or sent as bytes;
* a checkpoint: that directory plus ``optimizer.safetensors`` (``exp_avg/``, ``exp_avg_sq/``,
  ``master/`` per parameter, the step in its metadata) and ``tinsmith_checkpoint.json``, packed
  and uploaded to (or fetched from) storage through the worker's ``StorageSite``;
* a snapshot: ``weights/`` or ``master/`` tensors and AdamW's, as safetensors bytes in memory.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.storage.transfer import StorageSite
from tinsmith.types.archives import ArchiveRef, StoredObject
from tinsmith.types.internal import AdapterBlob, AdapterSnapshot, CheckpointMeta, SavedAdapter

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "tinsmith_checkpoint.json"


def adapter_blob(tensors: dict[str, torch.Tensor], config_json: bytes) -> AdapterBlob:
    """The peft files in memory, for the weight sync through Ray's object store."""
    from safetensors.torch import save

    return AdapterBlob(files={WEIGHTS_FILE: save(tensors), CONFIG_FILE: config_json})


def write_peft_dir(
    tensors: dict[str, torch.Tensor], config_json: bytes, directory: str
) -> SavedAdapter:
    """Write the adapter as a peft directory, replacing ``directory`` whole if it exists."""
    from safetensors.torch import save_file

    out = Path(directory)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_bytes(config_json)
    os.replace(tmp, out) if not out.exists() else _replace_dir(tmp, out)
    size = sum(f.stat().st_size for f in out.iterdir())
    return SavedAdapter(path=str(out), size_bytes=size)


def _replace_dir(tmp: Path, out: Path) -> None:
    import shutil

    old = out.with_name(out.name + ".old")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def upload_checkpoint(
    site: StorageSite,
    archive: ArchiveRef,
    meta: CheckpointMeta,
    weights: dict[str, torch.Tensor],
    config_json: bytes,
    optimizer: dict[str, torch.Tensor],
    optimizer_step: int,
) -> StoredObject:
    """Write the checkpoint directory in the site's staging area and store it as ``archive``
    (no optimizer file when ``optimizer`` is empty)."""
    from safetensors.torch import save_file

    from tinsmith.storage.transfer import upload_dir

    with tempfile.TemporaryDirectory(dir=site.staging()) as tmp:
        out = Path(tmp) / "checkpoint"
        write_peft_dir(weights, config_json, str(out))
        if optimizer:
            metadata = {"step": str(optimizer_step)}
            save_file(optimizer, str(out / OPTIMIZER_FILE), metadata=metadata)
        (out / META_FILE).write_text(meta.model_dump_json(indent=1))
        return upload_dir(site, archive, out)


@dataclass
class LoadedCheckpoint:
    """A fetched checkpoint's metadata, adapter weights and AdamW tensors (empty without them)."""

    meta: CheckpointMeta
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


def fetch_checkpoint(site: StorageSite, archive: ArchiveRef) -> LoadedCheckpoint:
    """Fetch (verified, cached per node) and read a checkpoint archive."""
    from safetensors.torch import load_file

    from tinsmith.storage.transfer import fetch_dir

    directory = fetch_dir(site, archive)
    meta = CheckpointMeta.model_validate_json((directory / META_FILE).read_text())
    weights = load_file(str(directory / WEIGHTS_FILE))
    optimizer = load_file(str(directory / OPTIMIZER_FILE)) if meta.has_optimizer else {}
    return LoadedCheckpoint(meta=meta, weights=weights, optimizer=optimizer)


def encode_snapshot(step: int, tensors: dict[str, torch.Tensor]) -> AdapterSnapshot:
    """A snapshot of the adapter's tensors (AdamW's and ``master/``, or ``weights/`` alone)."""
    from safetensors.torch import save

    return AdapterSnapshot(step=step, tensors=save(tensors))


def decode_snapshot(
    snap: AdapterSnapshot,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights by parameter name, AdamW tensors) of a snapshot; the fp32 masters serve as the
    weights when the snapshot has them."""
    from safetensors.torch import load

    tensors = load(snap.tensors)
    weights = {
        k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(("weights/", "master/"))
    }
    optimizer = {k: v for k, v in tensors.items() if not k.startswith("weights/")}
    return weights, optimizer
