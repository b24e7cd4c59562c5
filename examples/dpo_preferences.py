"""DPO with the tinker-cookbook's own trainer (`tinker_cookbook.preference.train_dpo`).

The preference set is built here: questions with a helpful answer (chosen) and a dismissive one
(rejected), written as the cookbook's JSONL comparison format and read by its
`ComparisonBuilderFromJsonl` + `DPODatasetBuilderFromComparisons`. The trainer computes the
reference logprobs with a sampler of the initial weights (`compute_logprobs`) and trains through
`forward_backward_custom` with its DPO loss. Its `accuracy` metric is measured on each batch
before the step that trains on it, so in the first epoch it is an accuracy on pairs not yet
trained on. At the first step policy == reference (margin 0, so the accuracy is a coin flip on
float noise); it rises to 1 within a few steps as the preference is learnt, and the margin grows.

    python examples/dpo_preferences.py                  # starts a local server
    python examples/dpo_preferences.py --base-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from cookbook_common import (
    MODEL,
    RENDERER,
    add_server_args,
    log_dir,
    quiet_logs,
    read_metrics,
    tinsmith,
)
from tinker_cookbook.preference import train_dpo
from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
from tinker_cookbook.preference.preference_datasets import ComparisonBuilderFromJsonl
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Chile": "Santiago", "Poland": "Warsaw", "Cuba": "Havana",
    "Ireland": "Dublin", "Austria": "Vienna",
}  # fmt: skip
DISMISSIVE = [
    "Look it up yourself.",
    "I don't feel like answering that.",
    "Why would I tell you?",
    "Not my problem.",
    "Ask someone else.",
    "That is a boring question.",
]


def preference_pairs(count: int, seed: int) -> list[dict[str, object]]:
    """`count` comparisons in the cookbook's JSONL shape; the helpful answer is randomly A or B."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(count):
        if i % 2 == 0:
            x, y = rng.randint(2, 60), rng.randint(2, 60)
            question, answer = f"What is {x} + {y}?", f"{x} + {y} = {x + y}."
        else:
            country = rng.choice(sorted(CAPITALS))
            question, answer = (
                f"What is the capital of {country}?",
                f"The capital of {country} is {CAPITALS[country]}.",
            )
        helpful = [{"role": "assistant", "content": answer}]
        dismissive = [{"role": "assistant", "content": rng.choice(DISMISSIVE)}]
        helpful_first = rng.random() < 0.5
        rows.append(
            {
                "comparison": {
                    "prompt_conversation": [{"role": "user", "content": question}],
                    "completion_A": helpful if helpful_first else dismissive,
                    "completion_B": dismissive if helpful_first else helpful,
                },
                "label": "A" if helpful_first else "B",
            }
        )
    return rows


def build_config(args: argparse.Namespace, base_url: str, log_path: str) -> train_dpo.Config:
    data = Path(log_path) / "preferences.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in preference_pairs(args.pairs, seed=0)))
    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=MODEL,
        renderer_name=RENDERER,
        max_length=256,
        batch_size=args.batch_size,
    )
    dataset = DPODatasetBuilderFromComparisons(
        common_config=common, comparison_builder=ComparisonBuilderFromJsonl(train_path=str(data))
    )
    return train_dpo.Config(
        log_path=log_path,
        model_name=MODEL,
        recipe_name="tinsmith_dpo_preferences",
        renderer_name=RENDERER,
        dataset_builder=dataset,
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=args.epochs,
        dpo_beta=args.beta,
        lora_rank=args.lora_rank,
        base_url=base_url,
        save_every=0,
        eval_every=0,
        max_steps=args.steps,
    )


def summarize(log_path: str) -> list[float]:
    """Print the DPO loss, accuracy and margin per step; return the accuracy curve."""
    accuracy: list[float] = []
    for row in read_metrics(log_path):
        if "accuracy" not in row:
            continue
        accuracy.append(float(row["accuracy"]))
        print(
            f"step {int(row['step']):3d}: dpo loss {row.get('dpo_loss', float('nan')):.4f}  "
            f"accuracy {row['accuracy']:.3f}  margin {row.get('margin', float('nan')):+.3f}"
        )
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="comparisons per step")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    quiet_logs()
    log_path = log_dir(args.log_path, "dpo")
    with tinsmith(args.base_url, args.config) as base_url:
        train_dpo.main(build_config(args, base_url, log_path))
    accuracy = summarize(log_path)
    if len(accuracy) > 3:
        last = sum(accuracy[-3:]) / 3
        print(
            f"preference accuracy: {accuracy[0]:.3f} at step 0 (policy = reference), "
            f"{last:.3f} in the last 3 steps"
        )
    print(f"metrics: {log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
