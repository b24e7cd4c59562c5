"""RL with the tinker-cookbook's own loop (`tinker_cookbook.rl.train`) on small addition problems.

Each problem is the cookbook's `ArithmeticEnv` ("What is x + y?", reward 1 for the right number, a
small penalty when the answer does not end with the stop token); the problems themselves are drawn
here, single-digit by default so that SmolLM2-135M starts at about 15 % and has room to learn.
Groups of `--group-size` samples per problem give group-relative advantages. With
`--max-steps-off-policy N` the run is async: rollouts from up to N older sampler versions stay in
flight while training goes on, and each batch reports its staleness. The loss is
`importance_sampling` by default (`--loss-fn ppo|cispo` also work); the sampler's logprobs of every
rollout are the behaviour policy of the importance ratio. On this small model one step moves the
policy far (sampler-vs-trainer KL ~0.1-1 at staleness 2), so ppo's [0.8, 1.2] clip zeroes most
tokens' gradients on stale batches: async ppo did not learn in 12 steps where async
importance_sampling did.

    python examples/rl_arithmetic.py                            # sync, starts a local server
    python examples/rl_arithmetic.py --max-steps-off-policy 2   # async off-policy
    python examples/rl_arithmetic.py --loss-fn ppo              # clipped surrogate instead
    python examples/rl_arithmetic.py --base-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from functools import partial

import chz
import numpy as np
from cookbook_common import (
    MODEL,
    RENDERER,
    add_server_args,
    log_dir,
    quiet_logs,
    read_metrics,
    tinsmith,
)
from tinker_cookbook import renderers
from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticEnv
from tinker_cookbook.rl import train
from tinker_cookbook.rl.problem_env import ProblemGroupBuilder
from tinker_cookbook.rl.types import EnvGroupBuilder, RLDataset, RLDatasetBuilder
from tinker_cookbook.tokenizer_utils import get_tokenizer


class AdditionProblems(RLDataset):
    """`n_batches` batches of `groups_per_batch` problems "x + y" with 0 <= x, y <= max_operand."""

    def __init__(
        self,
        renderer: renderers.Renderer,
        groups_per_batch: int,
        group_size: int,
        n_batches: int,
        max_operand: int,
    ) -> None:
        self.renderer = renderer
        self.groups_per_batch = groups_per_batch
        self.group_size = group_size
        self.n_batches = n_batches
        self.max_operand = max_operand

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        rng = np.random.default_rng(index)  # batch i is the same problems in every run
        builders = []
        for _ in range(self.groups_per_batch):
            x, y = (int(v) for v in rng.integers(0, self.max_operand + 1, size=2))
            env = partial(
                ArithmeticEnv,
                x,
                y,
                renderer=self.renderer,
                convo_prefix=ArithmeticEnv.standard_fewshot_prefix(),
            )
            builders.append(
                ProblemGroupBuilder(
                    env_thunk=env, num_envs=self.group_size, dataset_name="addition"
                )
            )
        return builders

    def __len__(self) -> int:
        return self.n_batches


@chz.chz
class AdditionProblemsBuilder(RLDatasetBuilder):
    groups_per_batch: int
    group_size: int
    n_batches: int
    max_operand: int = 9

    async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
        renderer = renderers.get_renderer(RENDERER, tokenizer=get_tokenizer(MODEL))
        problems = AdditionProblems(
            renderer, self.groups_per_batch, self.group_size, self.n_batches, self.max_operand
        )
        return problems, None


def build_config(args: argparse.Namespace, base_url: str, log_path: str) -> train.Config:
    async_config = None
    if args.max_steps_off_policy > 0:
        async_config = train.AsyncConfig(
            max_steps_off_policy=args.max_steps_off_policy,
            groups_per_batch=args.groups_per_batch,
            loss_fn=args.loss_fn,
        )
    return train.Config(
        learning_rate=args.learning_rate,
        dataset_builder=AdditionProblemsBuilder(
            groups_per_batch=args.groups_per_batch,
            group_size=args.group_size,
            # async runs end when the dataset runs out, so they get spare batches
            n_batches=args.steps * (2 if async_config else 1),
            max_operand=args.max_operand,
        ),
        model_name=MODEL,
        renderer_name=RENDERER,
        recipe_name="tinsmith_rl_arithmetic",
        max_tokens=args.max_tokens,
        log_path=log_path,
        base_url=base_url,
        lora_rank=args.lora_rank,
        loss_fn=args.loss_fn,
        async_config=async_config,
        max_steps=args.steps,
        eval_every=0,
        save_every=0,
        num_groups_to_log=0,
        rollout_json_export=False,
    )


def summarize(log_path: str, window: int) -> dict[str, float]:
    """Mean reward of the first and last `window` steps, and staleness per batch for async runs."""
    rows = [row for row in read_metrics(log_path) if "env/all/reward/total" in row]
    rewards = [float(row["env/all/reward/total"]) for row in rows]
    for row in rows:
        line = f"step {int(row['step']):3d}: reward {row['env/all/reward/total']:+.3f}"
        line += f"  correct {row.get('env/all/correct', float('nan')):.3f}"
        if "async/staleness_max" in row:  # async runs: how many steps old the batch's rollouts were
            line += (
                f"  staleness mean {row['async/staleness_mean']:.2f} max "
                f"{row['async/staleness_max']:.0f}"
            )
        print(line)
    first, last = float(np.mean(rewards[:window])), float(np.mean(rewards[-window:]))
    print(f"mean reward: first {window} steps {first:+.3f}, last {window} steps {last:+.3f}")
    return {"first": first, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--groups-per-batch", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-operand", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=6)
    # 4e-4 learnt faster when it worked but sometimes collapsed onto one wrong answer
    # (entropy 2.1 -> 0.3, reward flat)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--max-steps-off-policy", type=int, default=0, help="0: sync on-policy; N>0: async"
    )
    parser.add_argument(
        "--loss-fn", default="importance_sampling", choices=["importance_sampling", "ppo", "cispo"]
    )
    parser.add_argument(
        "--window", type=int, default=4, help="steps averaged at the start and the end"
    )
    args = parser.parse_args()
    quiet_logs()
    log_path = log_dir(args.log_path, "rl")
    with tinsmith(args.base_url, args.config) as base_url:
        asyncio.run(train.main(build_config(args, base_url, log_path)))
    summarize(log_path, args.window)
    print(f"metrics: {log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
