"""Supervised fine-tuning with the tinker-cookbook's own loop (`tinker_cookbook.supervised.train`).

The data is the chat file the cookbook ships (`tinker_cookbook/example_data/conversations.jsonl`,
128 conversations), read by the cookbook's `FromConversationFileBuilder`, rendered with the
`qwen3_instruct` renderer (ChatML, which SmolLM2-Instruct speaks), and trained on the assistant
turns. A held-out part is scored every `--eval-every` steps by the cookbook's `SamplerNLLEvaluator`
(save_weights_and_get_sampling_client + compute_logprobs): its `test/nll` is the eval loss.

    python examples/sl_conversations.py                  # starts a local server
    python examples/sl_conversations.py --base-url http://127.0.0.1:8000 --steps 20
"""

from __future__ import annotations

import argparse
import asyncio
from importlib import resources

from cookbook_common import (
    MODEL,
    RENDERER,
    add_server_args,
    log_dir,
    quiet_logs,
    read_metrics,
    tinsmith,
)
from tinker_cookbook.renderers import TrainOnWhat
from tinker_cookbook.supervised import train
from tinker_cookbook.supervised.data import FromConversationFileBuilder
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig


def conversations_file() -> str:
    """The example conversations bundled with the installed
    cookbook (read in place, never copied)."""
    return str(resources.files("tinker_cookbook") / "example_data" / "conversations.jsonl")


def build_config(args: argparse.Namespace, base_url: str, log_path: str) -> train.Config:
    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=MODEL,
        renderer_name=RENDERER,
        max_length=args.max_length,
        batch_size=args.batch_size,
        train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES,
    )
    dataset = FromConversationFileBuilder(
        common_config=common, file_path=conversations_file(), test_size=args.test_size
    )
    return train.Config(
        log_path=log_path,
        model_name=MODEL,
        recipe_name="tinsmith_sl_conversations",
        renderer_name=RENDERER,
        dataset_builder=dataset,
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=args.epochs,
        lora_rank=args.lora_rank,
        base_url=base_url,
        eval_every=args.eval_every,
        save_every=0,
        max_steps=args.steps,
    )


def summarize(log_path: str) -> dict[str, list[float]]:
    """Print train and eval loss per step; return the eval curve (test/nll at the steps it ran)."""
    evals: list[float] = []
    for row in read_metrics(log_path):
        line = (
            f"step {int(row['step']):3d}: train nll {row.get('train_mean_nll', float('nan')):.3f}"
        )
        if "test/nll" in row:
            evals.append(float(row["test/nll"]))
            line += f"  eval nll {row['test/nll']:.3f}"
        print(line)
    if evals:
        print(f"eval nll: first {evals[0]:.3f}, last {evals[-1]:.3f}")
    return {"eval_nll": evals}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=4)
    args = parser.parse_args()
    quiet_logs()
    log_path = log_dir(args.log_path, "sl")
    with tinsmith(args.base_url, args.config) as base_url:
        asyncio.run(train.main(build_config(args, base_url, log_path)))
    summarize(log_path)
    print(f"metrics: {log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
