"""Checkpoint save and load: seconds and MB/s, local directory vs S3, LoRA ranks 8 and 64.

Save is `save_state(name)` (adapter + AdamW state, archived and stored) as the SDK sees it; load
is `create_training_client_from_state_with_optimizer(path)` until the client is ready. S3 is a
real S3-compatible server (Swift + s3api) on loopback, so the figures are of the archive and
transfer path, not of a network. Each figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODEL, ROOT, fixed_batch, median

BUCKET = "tinsmith-bench"


def _config(path: Path, storage: dict[str, object] | None) -> Path:
    """The local preset's model, trainer only (no sampler: rank 64 is above its LoRA limit)."""
    raw = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    raw["sampler"] = {"num_replicas": 0}
    if storage:
        raw["storage"] = storage
    path.write_text(yaml.safe_dump(raw))
    return path


def _measure(base_url: str, rank: int, repeats: int) -> dict[str, float]:
    import tinker
    from tinker import types

    seq = fixed_batch()[0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
    )
    service = tinker.ServiceClient(base_url=base_url, api_key="tml-bench")
    rest = tinker.RestClient(base_url=base_url, api_key="tml-bench")
    tc = service.create_lora_training_client(base_model=MODEL, rank=rank).result()
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()  # so the optimizer state exists
    saves, loads = [], []
    path = ""
    for i in range(repeats):
        start = time.perf_counter()
        path = tc.save_state(f"bench-r{rank}-{i}").result().path
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        loaded = service.create_training_client_from_state_with_optimizer(path).result()
        loads.append(time.perf_counter() - start)
        loaded.get_info()
    sizes = {
        c.tinker_path: c.size_bytes or 0
        for c in rest.list_checkpoints(tc.model_id).result().checkpoints
    }
    mb = sizes[path] / 1e6
    return {"mb": mb, "save_s": median(saves), "load_s": median(loads)}


def main() -> None:
    from tinsmith.cluster.launcher import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    os.environ["NO_PROXY"] = ",".join(
        filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])
    )
    from tests.swift_server import SwiftServer

    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, SwiftServer() as swift:
        swift.create_bucket(BUCKET)
        backends: dict[str, dict[str, object] | None] = {
            "local": None,
            "s3": {
                "backend": "s3",
                "bucket": BUCKET,
                "endpoint_url": swift.endpoint_url,
                "access_key_id": swift.access_key,
                "secret_access_key": swift.secret_key,
            },
        }
        for name, storage in backends.items():
            with ServerProcess(_config(Path(tmp) / f"{name}.yaml", storage)) as server:
                for rank in args.ranks:
                    rows.append((name, rank, _measure(server.base_url, rank, args.repeats)))
    print(
        "\ncheckpoint save/load through the SDK (median of "
        f"{args.repeats}; save_state with AdamW state)"
    )
    print(
        f"{'backend':8} {'rank':>5} {'size MB':>8} {'save s':>8} {'save MB/s':>10} "
        f"{'load s':>8} {'load MB/s':>10}"
    )
    for name, rank, r in rows:
        print(
            f"{name:8} {rank:5d} {r['mb']:8.1f} {r['save_s']:8.2f} {r['mb'] / r['save_s']:10.1f}"
            f" {r['load_s']:8.2f} {r['mb'] / r['load_s']:10.1f}"
        )
    local = {rank: r for name, rank, r in rows if name == "local"}
    for name, rank, r in rows:
        if name == "s3":
            print(
                f"s3 / local at rank {rank}: save x{r['save_s'] / local[rank]['save_s']:.2f}, "
                f"load x{r['load_s'] / local[rank]['load_s']:.2f}"
            )


if __name__ == "__main__":
    main()
