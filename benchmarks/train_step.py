"""Training throughput: tinsmith through the SDK vs. a bare in-process transformers+peft step.

Same model (SmolLM2-135M), batch (8 x 128 tokens), LoRA rank 8, AdamW, fp32, on this machine.
Prints tokens/s of each and their ratio (target >= 0.9). Run: `python benchmarks/train_step.py`.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import BATCH, LORA_RANK, MODEL, ROOT, SEQ_LEN, fixed_batch, median


def bare_step_tokens_per_s(model_dir: str, batch: list[list[int]], steps: int, warmup: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules=targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    ids = torch.tensor([seq[:-1] for seq in batch])
    tgt = torch.tensor([seq[1:] for seq in batch])
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        logits = model(input_ids=ids, use_cache=False).logits.float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).squeeze(-1)
        loss = (-logprobs).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _ = logprobs.detach().tolist()  # the server returns per-token logprobs too
        if step >= warmup:
            times.append(time.perf_counter() - start)
    del model, opt
    gc.collect()
    return BATCH * SEQ_LEN / median(times)


def sdk_tokens_per_s(config: str, batch: list[list[int]], steps: int, warmup: int) -> tuple[float, str]:
    import tinker
    from tinker import types

    from tinsmith.cluster.launcher import ServerProcess

    with ServerProcess(config) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        tc = service.create_lora_training_client(base_model=MODEL, rank=LORA_RANK).result()
        model_dir = tc.get_info().model_data.tokenizer_id or ""
        data = [
            types.Datum(
                model_input=types.ModelInput.from_ints(seq[:-1]),
                loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * SEQ_LEN},
            )
            for seq in batch
        ]
        times = []
        for step in range(warmup + steps):
            start = time.perf_counter()
            fb = tc.forward_backward(data, "cross_entropy")
            opt = tc.optim_step(types.AdamParams(learning_rate=1e-4))
            fb.result()
            opt.result()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return BATCH * SEQ_LEN / median(times), model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    batch = fixed_batch()
    # The server runs first and is stopped before the bare loop, so they never share the CPUs.
    sdk, model_dir = sdk_tokens_per_s(args.config, batch, args.steps, args.warmup)
    bare = bare_step_tokens_per_s(model_dir, batch, args.steps, args.warmup)
    print(f"batch: {BATCH} x {SEQ_LEN} tokens, LoRA rank {LORA_RANK}, model {MODEL}, {os.cpu_count()} CPUs")
    print(f"bare transformers+peft step: {bare:8.1f} tokens/s")
    print(f"tinsmith via tinker SDK:     {sdk:8.1f} tokens/s")
    print(f"ratio (target >= 0.90):      {sdk / bare:8.3f}")


if __name__ == "__main__":
    main()
