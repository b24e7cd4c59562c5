"""Every model of configs/models.yaml: training and sampling throughput through the SDK vs the
bare libraries.

Per model: train tokens/s through the SDK and of a bare transformers+peft step (train_step.py's,
on the same LoRA targets), alternating step by step; sampled tokens/s of 16 concurrent requests
through the SDK and of vLLM's own `LLM.generate` on an engine built from the same arguments
(`engine_args`; a merged-mode model's engine from its untied base), both from the base model and
with the same prompts and seeds. The vLLM side runs after the server has stopped, one model per
process. Ratios are printed. Run: `python benchmarks/models.py`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import BATCH, LORA_RANK, ROOT, SEQ_LEN, fixed_batch, median
from benchmarks.train_step import BareProcess

CONFIG = ROOT / "configs" / "models.yaml"
REQUESTS, PROMPT_TOKENS, MAX_TOKENS = 16, 32, 48


def prompts() -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(1)
    return [[int(t) for t in rng.integers(100, 20000, size=PROMPT_TOKENS)] for _ in range(REQUESTS)]


def train(service: object, name: str, model_dir: str, steps: int) -> tuple[float, float]:
    """Median train tokens/s through the SDK and of the bare step, alternating."""
    from tinker import types

    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints(seq[:-1]),
            loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * SEQ_LEN},
        )
        for seq in fixed_batch(vocab=20000)
    ]
    tc = service.create_lora_training_client(base_model=name, rank=LORA_RANK).result()  # type: ignore[attr-defined]
    bare = BareProcess(model_dir)
    sdk_times, bare_times = [], []
    for i in range(1 + steps):
        start = time.perf_counter()
        fb = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        fb.result()
        sdk = time.perf_counter() - start
        plain = bare.step()
        if i:  # the first is warm-up
            sdk_times.append(sdk)
            bare_times.append(plain)
    bare.close()
    tokens = BATCH * SEQ_LEN
    return tokens / median(sdk_times), tokens / median(bare_times)


def sample_sdk(service: object, name: str, rounds: int) -> float:
    """Median sampled tokens/s of REQUESTS concurrent requests from the base model."""
    from tinker import types

    client = service.create_sampling_client(base_model=name).result()  # type: ignore[attr-defined]

    def one(i: int) -> int:
        params = types.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=i)
        prompt = types.ModelInput.from_ints(prompts()[i])
        return len(client.sample(prompt, 1, params).result().sequences[0].tokens)

    rates = []
    for r in range(1 + rounds):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
            tokens = sum(pool.map(one, range(REQUESTS)))
        if r:
            rates.append(tokens / (time.perf_counter() - start))
    return median(rates)


def vllm_worker(name: str, rounds: int) -> None:
    """Child-process mode: vLLM's LLM.generate alone on ``name``; prints its tokens/s as JSON."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tinsmith.actors.merged_weights import MergedWeights
    from tinsmith.actors.sampler import configure_process, engine_args
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.model_cache import prepare_all

    config = load_config(CONFIG)
    cfg = config.sampler_for(config.model(name))
    model_dir = str(prepare_all(config)[name])
    configure_process(cfg)
    weights = None
    if cfg.adapters == "merged":
        weights = MergedWeights(model_dir, Path(tempfile.mkdtemp(prefix="bench-"))).base_dir()
    llm = LLM(**engine_args(model_dir, cfg, weights))  # type: ignore[arg-type]
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts()]
    params = [
        SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=i) for i in range(REQUESTS)
    ]
    rates = []
    for r in range(1 + rounds):
        start = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        if r:
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            rates.append(tokens / (time.perf_counter() - start))
    print(json.dumps({"rate": median(rates)}), flush=True)


def main() -> None:
    import tinker

    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.launcher import ServerProcess
    from tinsmith.cluster.model_cache import prepare_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4, help="measured training steps")
    parser.add_argument("--rounds", type=int, default=2, help="measured sampling rounds")
    parser.add_argument("--vllm-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_worker:
        vllm_worker(args.vllm_worker, args.rounds)
        return
    config = load_config(CONFIG)
    dirs = prepare_all(config)
    sampled = [s.name for s in config.models if config.sampler_for(s).num_replicas > 0]
    rows: dict[str, dict[str, float]] = {}
    with ServerProcess(CONFIG) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        for spec in config.models:
            sdk, bare = train(service, spec.name, str(dirs[spec.name]), args.steps)
            rows[spec.name] = {"train_sdk": sdk, "train_bare": bare}
            if spec.name in sampled:
                rows[spec.name]["sample_sdk"] = sample_sdk(service, spec.name, args.rounds)
            print(spec.name, rows[spec.name], flush=True)
    for name in sampled:
        cmd = [sys.executable, __file__, "--vllm-worker", name, "--rounds", str(args.rounds)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith('{"rate"'))
        rows[name]["sample_vllm"] = json.loads(line)["rate"]  # vLLM logs to stdout too
    print(
        f"\ntrain: {BATCH} x {SEQ_LEN} tokens, LoRA rank {LORA_RANK}; sample: {REQUESTS} "
        f"concurrent requests, {PROMPT_TOKENS}-token prompts, {MAX_TOKENS} new tokens"
    )
    head = ("model", "train SDK", "bare", "ratio", "sample SDK", "vLLM", "ratio")
    print("{:38} {:>10} {:>9} {:>6}  {:>10} {:>8} {:>6}".format(*head))
    for name, r in rows.items():
        train_ratio = r["train_sdk"] / r["train_bare"]
        line = f"{name:38} {r['train_sdk']:10.1f} {r['train_bare']:9.1f} {train_ratio:6.2f}"
        if "sample_vllm" in r:
            sample_ratio = r["sample_sdk"] / r["sample_vllm"]
            line += f"  {r['sample_sdk']:10.1f} {r['sample_vllm']:8.1f} {sample_ratio:6.2f}"
        else:
            line += "  (train only: no sampler replica)"
        print(line)
    print("(tokens/s; ratios: through the SDK / the bare library)")


if __name__ == "__main__":
    main()
