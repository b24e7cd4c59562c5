"""Sampling throughput: 32 concurrent requests through the SDK vs vLLM's own `LLM.generate`.

Both sides sample the same prompts with the same per-request seeds from the base model, on an
engine built from the same arguments (`tinsmith.actors.sampler.engine_args` of the config). The
SDK side goes through the whole stack (HTTP, futures, coordinator, Ray actor, AsyncLLM); the
baseline is one in-process `LLM.generate` call over the 32 prompts, run after the server has
stopped (see below). The ratio of median tokens/s is printed (target >= 0.85).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MODEL, ROOT, median


def _prompts(n: int, length: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(1)
    return [[int(t) for t in rng.integers(100, 49152, size=length)] for _ in range(n)]


def main() -> None:
    import tinker
    from tinker import types

    from tinsmith.actors.sampler import configure_process, engine_args
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.launcher import ServerProcess
    from tinsmith.cluster.model_cache import prepare_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.config)
    spec = config.model(MODEL)
    sampler_cfg = config.sampler_for(spec)
    model_dir = str(prepare_all(config)[MODEL])
    prompts = _prompts(args.requests, args.prompt_tokens)

    def requests_round(one: Callable[[int], int]) -> tuple[int, float]:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.requests) as pool:
            tokens = sum(pool.map(one, range(args.requests)))
        return tokens, time.perf_counter() - start

    # Phase 1: the whole stack. Phase 2: vLLM alone. Not interleaved: an idle vLLM engine's
    # worker busy-polls a core, so two engines alive at once would slow whichever is measured.
    sdk_rates: list[float] = []
    with ServerProcess(args.config) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        client = service.create_sampling_client(base_model=MODEL).result()

        def one(i: int) -> int:
            params = types.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i)
            out = client.sample(types.ModelInput.from_ints(prompts[i]), 1, params).result()
            return len(out.sequences[0].tokens)

        requests_round(one)  # warm-up
        for r in range(args.rounds):
            tokens, seconds = requests_round(one)
            sdk_rates.append(tokens / seconds)
            print(
                (
                    f"round {r} sdk : {tokens} tokens in {seconds:.2f} s = "
                    f"{tokens / seconds:.1f} tok/s"
                ),
                flush=True,
            )

    configure_process(sampler_cfg)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(**engine_args(model_dir, sampler_cfg))  # type: ignore[arg-type]
    vllm_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    vllm_params = [
        SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i)
        for i in range(len(prompts))
    ]
    llm.generate(vllm_prompts, vllm_params, use_tqdm=False)  # warm-up
    vllm_rates: list[float] = []
    for r in range(args.rounds):
        start = time.perf_counter()
        outs = llm.generate(vllm_prompts, vllm_params, use_tqdm=False)
        tokens, seconds = (
            sum(len(o.outputs[0].token_ids) for o in outs),
            time.perf_counter() - start,
        )
        vllm_rates.append(tokens / seconds)
        print(
            f"round {r} vllm: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tok/s",
            flush=True,
        )
    sdk, base = median(sdk_rates), median(vllm_rates)
    print(
        f"\n{args.requests} concurrent requests, {args.prompt_tokens}-token "
        f"prompts, max_tokens {args.max_tokens}"
    )
    print(f"vLLM LLM.generate in-process: {base:8.1f} sampled tok/s")
    print(f"tinsmith through the SDK:     {sdk:8.1f} sampled tok/s")
    print(f"ratio SDK / vLLM:             {sdk / base:8.2f}   (target >= 0.85)")


if __name__ == "__main__":
    main()
