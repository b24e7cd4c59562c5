"""The main demo: start a local tinsmith server and fine-tune with the official tinker SDK.

A few supervised steps on a small built-in chat set, printing the loss per step and a greedy
sample before and after training. Run with `make run` (or `python examples/demo.py`).
"""

from __future__ import annotations

import argparse
import os
import time

import tinker
from tinker import types

from tinsmith.cluster.launcher import ServerProcess

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHATS = [
    ("What is tinsmith?", "tinsmith is a self-hosted Tinker server that runs on Ray."),
    (
        "Where does tinsmith train?",
        "tinsmith trains LoRA adapters with DeepSpeed on your own machines.",
    ),
    ("How does tinsmith sample?", "tinsmith samples with vLLM from the weights you just trained."),
    ("Who can use tinsmith?", "Anyone with Tinker code can point it at tinsmith unchanged."),
]


def build_datums(tokenizer: object) -> list[types.Datum]:
    """Chat-formatted examples whose loss covers only the assistant's reply."""
    datums = []
    for question, answer in CHATS:
        prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer.encode(prompt)  # type: ignore[attr-defined]
        answer_ids = tokenizer.encode(answer + "<|im_end|>")  # type: ignore[attr-defined]
        tokens = prompt_ids + answer_ids
        weights = [0.0] * (len(prompt_ids) - 1) + [1.0] * len(answer_ids)
        datums.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
            )
        )
    return datums


def greedy(sampler: tinker.SamplingClient, tokenizer: object, question: str) -> str:
    prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(prompt)  # type: ignore[attr-defined]
    params = types.SamplingParams(max_tokens=32, temperature=0.0, stop=["<|im_end|>"])
    out = sampler.sample(
        types.ModelInput.from_ints(ids), num_samples=1, sampling_params=params
    ).result()
    return tokenizer.decode(out.sequences[0].tokens, skip_special_tokens=True)  # type: ignore[attr-defined]


def run(base_url: str, steps: int) -> None:
    service = tinker.ServiceClient(
        base_url=base_url, api_key=os.environ.get("TINKER_API_KEY", "tml-local-demo")
    )
    training = service.create_lora_training_client(base_model=MODEL, rank=8).result()
    tokenizer = training.get_tokenizer()
    datums = build_datums(tokenizer)
    question = CHATS[0][0]
    before = greedy(service.create_sampling_client(base_model=MODEL).result(), tokenizer, question)
    print(f"before training: {question!r} -> {before!r}")
    for step in range(steps):
        start = time.perf_counter()
        fb = training.forward_backward(datums, "cross_entropy")
        opt = training.optim_step(types.AdamParams(learning_rate=2e-3))
        loss = fb.result().metrics["loss:sum"]
        opt.result()
        print(f"step {step + 1}: loss:sum = {loss:.3f}  ({time.perf_counter() - start:.2f}s)")
    sampler = training.save_weights_and_get_sampling_client().result()
    after = greedy(sampler, tokenizer, question)
    print(f"after training:  {question!r} -> {after!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--base-url", default=None, help="use a running server instead of starting one"
    )
    args = parser.parse_args()
    if args.base_url:
        run(args.base_url, args.steps)
        return
    print(f"starting tinsmith serve --config {args.config} (first start takes a minute or two) ...")
    with ServerProcess(args.config) as server:
        print(f"server up at {server.base_url} (log: {server.log_path})")
        run(server.base_url, args.steps)


if __name__ == "__main__":
    main()
