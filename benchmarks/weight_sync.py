"""Weight-sync latency: save_weights_and_get_sampling_client() until the first sample from it.

Also prints a one-token sample on an already-synced client in the same run, so the sync's own
cost (the difference) is visible. Target: <= 0.1 s for the adapter (SmolLM2-135M, LoRA rank 8).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import LORA_RANK, MODEL, ROOT, fixed_batch, median


def main() -> None:
    import tinker
    from tinker import types

    from tinsmith.cluster.launcher import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    seq = fixed_batch()[0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
    )
    prompt = types.ModelInput.from_ints(seq[:16])
    one_token = types.SamplingParams(max_tokens=1, temperature=0.0)
    with ServerProcess(args.config) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        tc = service.create_lora_training_client(base_model=MODEL, rank=LORA_RANK).result()
        base_sampler = service.create_sampling_client(base_model=MODEL).result()
        sync_total, save_only, sample_only, base_only = [], [], [], []
        for i in range(args.repeats + 1):
            tc.forward_backward([datum], "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
            start = time.perf_counter()
            sampler = tc.save_weights_and_get_sampling_client().result()
            saved = time.perf_counter()
            sampler.sample(prompt, num_samples=1, sampling_params=one_token).result()
            done = time.perf_counter()
            sampler.sample(prompt, num_samples=1, sampling_params=one_token).result()
            again = time.perf_counter()
            base_sampler.sample(prompt, num_samples=1, sampling_params=one_token).result()
            base_done = time.perf_counter()
            if i > 0:  # the first round warms up the adapter path
                base_only.append(base_done - again)
                sync_total.append(done - start)
                save_only.append(saved - start)
                sample_only.append(again - done)
    total, save, sample = median(sync_total), median(save_only), median(sample_only)
    print(f"model {MODEL}, LoRA rank {LORA_RANK}, {args.repeats} rounds (medians)")
    print(f"save_weights_and_get_sampling_client():            {save:7.3f} s")
    print(f"  ... until first sample from the new weights:     {total:7.3f} s  (target <= 0.100)")
    print(f"one-token sample on an already-synced client:      {sample:7.3f} s")
    print(f"weight sync alone (difference):                    {total - sample:7.3f} s")
    print(f"one-token sample from the base model (no LoRA):    {median(base_only):7.3f} s")


if __name__ == "__main__":
    main()
