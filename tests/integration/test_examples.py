"""The tinker-cookbook examples, run unchanged as programs against the session's tinsmith server.

Each example is the cookbook's own training loop (supervised.train, rl.train, preference.train_dpo)
on SmolLM2-135M; these are their short CI versions. The margins each test asserts are stated in
its docstring. The examples read the cookbook's `metrics.jsonl`, so do the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_example(
    server: object, script: str, *args: str, timeout: float = 1500
) -> list[dict[str, float]]:
    """Run examples/<script> on the session server; return its metrics rows in step order."""
    env = dict(os.environ, TINKER_API_KEY="tml-tests", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(ROOT / "examples" / script), "--base-url", server.base_url]  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix=f"tinsmith-example-{Path(script).stem}-") as logs:
        log_path = Path(logs)
        done = subprocess.run(
            [*cmd, "--log-path", str(log_path), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
        rows = [
            json.loads(line)
            for line in (log_path / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
    return sorted(rows, key=lambda row: row["step"])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_sl_example_eval_loss_falls(server: object) -> None:
    """Cookbook SL on its bundled conversations: held-out NLL after 2 steps is at least 5 %
    below the start (it falls ~35 % within the first 4 steps: benchmarks/REPORT.md; 0.815 ->
    0.557 after 2 here). The cookbook evaluates before a step's training, so the run has a
    third step for the evaluation at step 2."""
    rows = run_example(server, "sl_conversations.py", "--steps", "3", "--eval-every", "2")
    evals = [row["test/nll"] for row in rows if "test/nll" in row]
    assert len(evals) >= 2, rows
    assert evals[-1] < 0.95 * evals[0], evals


def test_rl_example_reward_rises(server: object) -> None:
    """Cookbook RL (sync, importance_sampling) on single-digit addition (operands 0-3): the mean
    reward of the last 2 of 5 steps (16 groups of 8 rollouts each, learning rate 6e-4) is at
    least 0.15 above that of the first 2. The base model starts near 0.1-0.2. Runs of these
    settings here, rewards per step: 0.08, 0.16, 0.28, 0.38, 0.41 and 0.11, 0.15, 0.25, 0.46,
    0.62 (+0.27 and +0.41). Batches of 8 groups learnt as fast per step but not reliably: the
    policy's entropy fell from 2.4 to 0.8 within two steps, and one run in four collapsed onto
    wrong answers (0.19, 0.09, 0.24, 0.37, 0.22, 0.38, 0.15 over 7 steps; on operands 0-5, two
    runs of six); 16 groups halve the gradient noise of a step, and the reward rose every step.
    The sampler and the trainer agreed on every rollout throughout (the cookbook's
    kl_sample_train ~0), so a collapse is the policy's, not stale weights."""
    rows = run_example(
        server,
        "rl_arithmetic.py",
        *("--steps", "5", "--groups-per-batch", "16", "--learning-rate", "6e-4"),
        *("--max-operand", "3"),
    )
    rewards = [
        row["env/all/reward/total"] for row in rows if "env/all/reward/total" in row
    ]  # not the final save's
    assert len(rewards) == 5, rows
    assert mean(rewards[-2:]) >= mean(rewards[:2]) + 0.15, rewards


def test_async_rl_example_trains_on_stale_rollouts(server: object) -> None:
    """Cookbook async RL (importance_sampling, max_steps_off_policy=2): every batch reports its
    staleness, and some batch mixes rollouts of at least 2 sampler versions (max staleness >= 1;
    batches of 2 groups reached staleness 0, 1, 2 here)."""
    rows = run_example(
        server,
        "rl_arithmetic.py",
        *("--steps", "3", "--groups-per-batch", "2", "--max-steps-off-policy", "2"),
    )
    rows = [
        row for row in rows if "env/all/reward/total" in row
    ]  # training steps, not the final save's row
    assert len(rows) == 3, rows
    assert all("async/staleness_max" in row and "async/staleness_mean" in row for row in rows), rows
    assert max(row["async/staleness_max"] for row in rows) >= 1, [
        row["async/staleness_max"] for row in rows
    ]
    assert all(row["env/all/reward/total"] == row["env/all/reward/total"] for row in rows)  # no NaN


def test_dpo_example_preference_accuracy_rises(server: object) -> None:
    """Cookbook DPO through forward_backward_custom on a preference set built by the example. At the
    first step policy == reference: margin ~0 (|margin| < 0.05), so its accuracy is chance. Over the
    last 3 of 6 steps (pairs not yet trained on) the accuracy averages >= 0.9, the margin > 0.3, and
    the DPO loss is below 0.6 (ln 2 = 0.693 at the start). Runs here (the same every time): margins
    0.51, 0.68, 0.88 and losses 0.47, 0.41, 0.35 at steps 3-5, accuracy 1.0 from step 1."""
    rows = run_example(server, "dpo_preferences.py", "--pairs", "48", "--batch-size", "8")
    rows = [row for row in rows if "accuracy" in row]
    assert len(rows) == 6, rows
    assert abs(rows[0]["margin"]) < 0.05, rows[0]
    last = rows[-3:]
    assert mean([row["accuracy"] for row in last]) >= 0.9, [row["accuracy"] for row in rows]
    assert min(row["margin"] for row in last) > 0.3, [row["margin"] for row in rows]
    assert max(row["dpo_loss"] for row in last) < 0.6, [row["dpo_loss"] for row in rows]
