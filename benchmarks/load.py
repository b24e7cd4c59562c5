"""Load: 32 concurrent SDK clients, training and sampling mixed, against one server.

Half the clients train (forward_backward + optim_step, and every few steps an in-memory weight
sync and a sample from the new weights), half sample the base model. Each runs until --seconds
have passed. Printed: completed requests, errors (must be 0), p50/p99 latency per request kind,
and the peak resident memory of the server's whole process tree (API server, Ray, trainer and
sampler actors, vLLM), sampled every half second.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODEL, ROOT, fixed_batch


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    import tinker
    from tinker import types

    from tinsmith.cluster.launcher import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    seqs = fixed_batch()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()

    def timed(kind: str, call: object) -> object:
        start = time.perf_counter()
        result = call.result()  # type: ignore[attr-defined]
        with lock:
            latencies[kind].append(time.perf_counter() - start)
        return result

    with ServerProcess(args.config) as server:
        stop_at = time.monotonic() + args.seconds
        peak = [0]
        watching = threading.Event()

        def watch() -> None:
            assert server.proc is not None
            while not watching.is_set():
                peak[0] = max(peak[0], _tree_rss(server.proc.pid))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def trainer(i: int) -> None:
            service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
            tc = service.create_lora_training_client(base_model=MODEL, rank=8)
            tc = timed("create_model", tc)  # type: ignore[assignment]
            seq = seqs[i % len(seqs)][:33]
            datum = types.Datum(
                model_input=types.ModelInput.from_ints(seq[:-1]),
                loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
            )
            step = 0
            while time.monotonic() < stop_at:
                timed("forward_backward", tc.forward_backward([datum], "cross_entropy"))  # type: ignore[attr-defined]
                timed("optim_step", tc.optim_step(types.AdamParams(learning_rate=1e-4)))  # type: ignore[attr-defined]
                step += 1
                if step % 3 == 0:
                    sampler = timed("weight_sync", tc.save_weights_and_get_sampling_client())  # type: ignore[attr-defined]
                    params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=step)
                    timed(
                        "sample_adapter",
                        sampler.sample(types.ModelInput.from_ints(seq[:8]), 1, params),
                    )  # type: ignore[attr-defined]

        def sampler_client(i: int) -> None:
            service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
            client = timed("create_sampler", service.create_sampling_client(base_model=MODEL))
            seq = seqs[i % len(seqs)]
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=n)
                timed("sample_base", client.sample(types.ModelInput.from_ints(seq[:16]), 1, params))  # type: ignore[attr-defined]

        def run(i: int) -> None:
            try:
                (trainer if i % 2 == 0 else sampler_client)(i)
            except Exception:
                with lock:
                    errors.append(traceback.format_exc(limit=3))

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(run, range(args.clients)))
        elapsed = time.perf_counter() - started
        watching.set()
        watcher.join()

    total = sum(len(v) for v in latencies.values())
    n_train = (args.clients + 1) // 2
    print(
        f"\n{args.clients} clients ({n_train} training, "
        f"{args.clients - n_train} sampling), {elapsed:.0f} s"
    )
    print(
        f"completed requests: {total}   errors: {len(errors)}   ({total / elapsed:.2f} requests/s)"
    )
    print(f"{'kind':18} {'count':>6} {'p50 s':>8} {'p99 s':>8}")
    for kind in sorted(latencies):
        values = latencies[kind]
        print(
            f"{kind:18} {len(values):6d} {_percentile(values, 0.5):8.3f} "
            f"{_percentile(values, 0.99):8.3f}"
        )
    print(f"server peak memory (whole process tree): {peak[0] / 2**30:.2f} GiB")
    for error in errors[:3]:
        print(error)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
