"""Weight-sync latency for LoRA ranks 1, 8, 32, 64: in memory and through storage.

* in memory: `save_weights_and_get_sampling_client()` until it returns, i.e. until rank 0 has
  exported the adapter into Ray's object store and every sampler replica has loaded it (target:
  <= 0.1 s up to rank 32 on the default model); then until the first one-token sample from it.
* through storage: `save_weights_for_sampler(name)` (archive written and recorded) plus
  `create_sampling_client(model_path=...)` and the first one-token sample, which fetches the archive
  into the replica's cache and loads it.

A one-token sample on an already-synced client is printed beside them: on vLLM-CPU most of
"until first sample" is that sample, not the sync. vLLM pads every adapter to the sampler's
`max_lora_rank`, so ranks up to 32 run on the default config (limit 32) and rank 64 on a copy with
limit 64. Medians of --repeats rounds after one warm-up round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODEL, ROOT, fixed_batch, median


def _measure(base_url: str, rank: int, repeats: int) -> dict[str, float]:
    import tinker
    from tinker import types

    seq = fixed_batch()[0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
    )
    prompt = types.ModelInput.from_ints(seq[:16])
    one_token = types.SamplingParams(max_tokens=1, temperature=0.0)
    service = tinker.ServiceClient(base_url=base_url, api_key="tml-bench")
    tc = service.create_lora_training_client(base_model=MODEL, rank=rank).result()
    rows: dict[str, list[float]] = {
        "sync": [],
        "sync_sample": [],
        "sample": [],
        "storage": [],
        "storage_sample": [],
    }
    for i in range(repeats + 1):
        tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        start = time.perf_counter()
        sampler = tc.save_weights_and_get_sampling_client().result()
        synced = time.perf_counter()
        sampler.sample(prompt, 1, one_token).result()
        first = time.perf_counter()
        sampler.sample(prompt, 1, one_token).result()
        again = time.perf_counter()
        path = tc.save_weights_for_sampler(f"sync-{rank}-{i}").result().path
        from_storage = service.create_sampling_client(model_path=path).result()
        stored = time.perf_counter()
        from_storage.sample(prompt, 1, one_token).result()
        stored_first = time.perf_counter()
        if i == 0:
            continue  # warm-up
        rows["sync"].append(synced - start)
        rows["sync_sample"].append(first - start)
        rows["sample"].append(again - first)
        rows["storage"].append(stored - again)
        rows["storage_sample"].append(stored_first - again)
    return {k: median(v) for k, v in rows.items()}


def main() -> None:
    from tinsmith.cluster.launcher import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for limit in sorted({32 if r <= 32 else 64 for r in args.ranks}):
            raw = yaml.safe_load(Path(args.config).read_text())
            raw.setdefault("sampler", {})["max_lora_rank"] = limit
            config = Path(tmp) / f"sync-{limit}.yaml"
            config.write_text(yaml.safe_dump(raw))
            with ServerProcess(config) as server:
                for rank in [r for r in args.ranks if (32 if r <= 32 else 64) == limit]:
                    results[rank] = _measure(server.base_url, rank, args.repeats)
    print(f"\nweight sync on {MODEL} (medians of {args.repeats}; seconds)")
    print(
        f"{'rank':>4} {'limit':>5} | {'in-memory sync':>14} {'+first sample':>13} | "
        f"{'via storage':>11} {'+first sample':>13} | {'synced 1-token sample':>21}"
    )
    for rank in sorted(results):
        r = results[rank]
        limit = 32 if rank <= 32 else 64
        print(
            f"{rank:4d} {limit:5d} | {r['sync']:14.3f} {r['sync_sample']:13.3f} | "
            f"{r['storage']:11.3f} {r['storage_sample']:13.3f} | {r['sample']:21.3f}"
        )
    print("target: in-memory sync <= 0.100 s up to rank 32")


if __name__ == "__main__":
    main()
