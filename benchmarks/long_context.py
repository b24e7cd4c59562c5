"""Long datums: step time and trainer peak memory for one datum of 1k, 2k, 4k and 8k tokens.

Runs the real ``TrainerWorker`` (DeepSpeed, peft, SmolLM2-135M, fp32, LoRA rank 8) with no
server, each run in a fresh process so its peak RSS (the kernel's VmHWM, minus the RSS once the
model and adapter are loaded) is its own. With the features on: gradient checkpointing of every
layer, logprobs in chunks of 2,048 tokens (a packed row: one datum fills it). Off: neither, run
where the estimate from the shorter lengths fits in 80% of the machine's available memory.
Prints seconds of one forward_backward + optim_step, the peak above idle, and the memory each
further token costs; with the features on that must not grow with the length (linear memory).

Run: ``python benchmarks/long_context.py`` (``--lengths 1024 2048`` for a quick look).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import LORA_RANK, MODEL, ROOT
from tests.integration.helpers import proc_memory_kib

LENGTHS = (1024, 2048, 4096, 8192)
CHUNK_TOKENS = 2048


def run_one(model_dir: str, length: int, features: bool) -> dict[str, float]:
    """Child-process mode: one step on one datum; seconds and peak bytes above idle."""
    import random

    from tinsmith.actors.batching import plan_rank_work
    from tinsmith.actors.trainer import TrainerWorker
    from tinsmith.cluster.launcher import free_port
    from tinsmith.storage.transfer import StorageSite
    from tinsmith.types.internal import (
        AdapterSpec,
        BatchLayout,
        OptimStepWork,
        RankWork,
        TokenDatum,
    )
    from tinsmith.types.settings import TrainerConfig
    from tinsmith.types.training import AdamParams, LoraConfig

    config = TrainerConfig(num_ranks=1, zero_stage=1)
    site = StorageSite(data_dir=tempfile.mkdtemp(prefix="tinsmith-long-"))
    worker = TrainerWorker(0, 1, "127.0.0.1", free_port(), model_dir, config, site)
    worker.create_adapter(AdapterSpec(adapter_id="a", lora=LoraConfig(rank=LORA_RANK)))
    rng = random.Random(length)
    tokens = [rng.randrange(100, 49152) for _ in range(length + 1)]
    datum = TokenDatum(
        index=0, input_tokens=tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * length
    )
    layout = BatchLayout(
        micro_batch_tokens=length,
        checkpoint_above_tokens=0 if features else None,
        logprob_chunk_tokens=CHUNK_TOKENS if features else 0,
    )
    batches = plan_rank_work([datum], 1, layout)[0]
    work = RankWork(
        adapter_id="a",
        loss_fn="cross_entropy",
        forward_only=False,
        micro_batches=batches,
        grad_scale=1.0,
    )
    idle = proc_memory_kib(os.getpid(), "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from now on
    start = time.perf_counter()
    worker.forward_backward(work)
    worker.optim_step(OptimStepWork(adapter_id="a", adam=AdamParams(learning_rate=1e-4)))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_bytes": (proc_memory_kib(os.getpid(), "VmHWM") - idle) * 1024.0,
    }


def _child(model_dir: str, length: int, features: bool) -> dict[str, float] | None:
    """One step in a fresh process; None when the kernel killed it (out of memory)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", model_dir, str(length), str(int(features))],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode == -9:
        return None
    if out.returncode != 0:
        raise RuntimeError(f"the {length}-token step failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fits_off(off: dict[int, dict[str, float]], length: int) -> bool:
    """Whether the features-off step of ``length`` tokens is expected to fit in 80% of the
    available memory: extrapolated linearly at the steepest slope measured so far (the heap's
    reuse makes single intervals flatter than the real growth)."""
    known = sorted(off)
    if len(known) < 2:
        return True
    slope = max(
        (off[b]["peak_bytes"] - off[a]["peak_bytes"]) / (b - a)
        for a, b in itertools.pairwise(known)
    )
    last = known[-1]
    return off[last]["peak_bytes"] + slope * (length - last) < 0.8 * _available_bytes()


def _available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024.0
    return float("inf")


def main() -> None:
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.model_cache import prepare_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, length, features = args.child
        print(json.dumps(run_one(model_dir, int(length), features == "1")))
        return
    model_dir = str(prepare_all(load_config(ROOT / "configs" / "local.yaml"))[MODEL])
    gib = 2**30
    print(f"{MODEL}, fp32, LoRA rank {LORA_RANK}, one datum per step, trainer without a server")
    print("tokens | features on: step s, peak GiB | features off: step s, peak GiB")
    on: dict[int, dict[str, float]] = {}
    off: dict[int, dict[str, float]] = {}
    killed = False  # the features-off step of a shorter length ran out of memory
    for length in args.lengths:
        result = _child(model_dir, length, True)
        if result is None:
            print(f"{length:6d} | killed by the kernel (out of memory) with the features on")
            break
        on[length] = result
        other = "   (does not fit: not run)"
        if not killed and _fits_off(off, length):
            result = _child(model_dir, length, False)
            if result is None:
                killed, other = True, "   (killed by the kernel: out of memory)"
            else:
                off[length] = result
                other = f"{result['seconds']:7.1f} s, {result['peak_bytes'] / gib:5.2f} GiB"
        cells = f"{on[length]['seconds']:7.1f} s, {on[length]['peak_bytes'] / gib:5.2f} GiB"
        print(f"{length:6d} | {cells} | {other}", flush=True)
    lengths = sorted(on)
    if len(lengths) >= 2:
        per_token = [
            (on[b]["peak_bytes"] - on[a]["peak_bytes"]) / (b - a) / 2**10
            for a, b in itertools.pairwise(lengths)
        ]
        print(
            "features on, memory per further token (KiB), between successive lengths: "
            + ", ".join(f"{x:.0f}" for x in per_token)
        )
        linear = per_token[-1] <= 1.25 * max(per_token[0], 1.0)
        verdict = "linear" if linear else "FASTER THAN LINEAR"
        print(f"memory growth with the features on: {verdict} (last interval <= 1.25x the first)")
        ratio = on[lengths[-1]]["peak_bytes"] / max(on[lengths[0]]["peak_bytes"], 1.0)
        print(f"peak {lengths[-1]} / peak {lengths[0]} tokens: {ratio:.2f}x")


if __name__ == "__main__":
    main()
