"""Regenerate benchmarks/REPORT.md: every benchmark's figures and the
example runs' curves, on this machine.

Runs the tinker-cookbook examples (`examples/`) against one local server, then each script of
`benchmarks/` (each starts its own server and prints its figures against a baseline measured in
the same run), and writes `benchmarks/REPORT.md` with the benchmarks' output and three plots in
`benchmarks/report/`: the SL loss curve, the RL reward curve (sync and async off-policy) and
throughput per step (training tokens/s of SL steps, sampled tokens/s of RL rollouts).
Run: `make report` (about an hour on a 2-core CPU machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "report"

# (title, script and arguments, what the figures mean). Arguments trim repeats to
# keep the whole report about an hour.
BENCHMARKS: list[tuple[str, list[str], str]] = [
    (
        "Training step",
        ["train_step.py"],
        "tinsmith through the SDK vs a bare transformers+peft step (ratio)",
    ),
    (
        "Rank scaling",
        ["train_step.py", "--scaling"],
        "1 vs 2 ranks (ZeRO-1; ZeRO-2 for comparison), padding, memory per tenant",
    ),
    (
        "Long context",
        ["long_context.py"],
        "one datum of 1k-8k tokens: step seconds and trainer peak memory, checkpointing and "
        "chunked logprobs on vs off",
    ),
    (
        "Weight sync",
        ["weight_sync.py", "--repeats", "3"],
        "in-memory and storage sync latency by LoRA rank",
    ),
    ("Sampling", ["sampling.py"], "32 concurrent SDK requests vs in-process vLLM (ratio)"),
    ("Checkpoints", ["checkpoint.py"], "save/load seconds and MB/s, local directory vs S3"),
    (
        "Load",
        ["load.py", "--seconds", "60"],
        "32 concurrent SDK clients: requests, errors, p50/p99, peak memory",
    ),
]
# (name, script, arguments, metrics it is plotted from)
EXAMPLES: list[tuple[str, str, list[str]]] = [
    ("sl", "sl_conversations.py", []),
    ("rl", "rl_arithmetic.py", ["--steps", "16"]),
    ("rl_async", "rl_arithmetic.py", ["--steps", "12", "--max-steps-off-policy", "2"]),
    ("dpo", "dpo_preferences.py", []),
]


# vLLM's and Ray's own log lines ("(EngineCore pid=1) INFO 11-27 08:46:33 [core.py:402] ..."), which
# the in-process vLLM baseline prints to stdout: not figures, so they stay out of the report.
LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[")


def run(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[str, float, int]:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        figures = "\n".join(line for line in done.stdout.splitlines() if not LOG_LINE.search(line))
        out, rc = figures + (done.stderr[-3000:] if done.returncode else ""), done.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"{exc.stdout or ''}\n(timed out after {timeout:.0f} s)", 124
    return out.strip(), time.perf_counter() - start, rc


def metrics(log_path: Path) -> list[dict[str, float]]:
    path = log_path / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row.get("step", 0))


def series(rows: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    picked = [(int(r["step"]), float(r[key])) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]


def plots(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_mean_nll", "train NLL"), ("test/nll", "eval NLL (held-out)")):
        x, y = series(runs.get("sl", []), key)
        ax.plot(x, y, marker="o", label=label)
    ax.set(
        xlabel="step",
        ylabel="mean NLL per token",
        title="SL (cookbook supervised.train, conversations.jsonl)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "sl_loss.png", dpi=100)
    made.append("sl_loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (
        ("rl", "sync, importance_sampling"),
        ("rl_async", "async off-policy (2), importance_sampling"),
    ):
        x, y = series(runs.get(name, []), "env/all/reward/total")
        ax.plot(x, y, marker="o", label=label)
    ax.set(
        xlabel="step", ylabel="mean reward", title="RL (cookbook rl.train, single-digit addition)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "rl_reward.png", dpi=100)
    made.append("rl_reward.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    # The SL loop pipelines its requests, so only the RL loops time a whole training step.
    for name, label in (("rl", "RL sync"), ("rl_async", "RL async")):
        rows = [r for r in runs.get(name, []) if r.get("time/train_step") and "tokens/trained" in r]
        speed = [r["tokens/trained"] / r["time/train_step"] for r in rows]
        left.plot([int(r["step"]) for r in rows], speed, "o-", label=label)
    left.set(
        xlabel="step",
        ylabel="tokens/s",
        title="RL training: trained tokens per second of train step",
    )
    left.legend()
    rows = [r for r in runs.get("rl", []) if r.get("time/sampling") and "tokens/sampled" in r]
    rollout = [
        (r["tokens/sampled"] + r.get("tokens/prefill_uncached", 0)) / r["time/sampling"]
        for r in rows
    ]
    right.plot([int(r["step"]) for r in rows], rollout, "o-")
    right.set(
        xlabel="step", ylabel="tokens/s", title="RL rollouts: prompt + sampled tokens per second"
    )
    fig.tight_layout()
    fig.savefig(OUT / "throughput.png", dpi=100)
    made.append("throughput.png")
    plt.close("all")
    return made


def example_summary(name: str, rows: list[dict[str, float]]) -> str:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    if name == "sl":
        _, ev = series(rows, "test/nll")
        return (
            f"eval NLL {ev[0]:.3f} → {ev[-1]:.3f} over {len(rows)} steps" if ev else "no eval rows"
        )
    if name.startswith("rl"):
        _, reward = series(rows, "env/all/reward/total")
        text = (
            f"mean reward first 4 steps {mean(reward[:4]):+.3f}, last 4 "
            f"steps {mean(reward[-4:]):+.3f}"
        )
        _, stale = series(rows, "async/staleness_max")
        if stale:
            text += f"; staleness max per batch {[int(s) for s in stale]}"
        return text
    _, acc = series(rows, "accuracy")
    _, margin = series(rows, "margin")
    return (
        f"preference accuracy {acc[0]:.2f} at step 0 (policy = reference) → {mean(acc[-3:]):.2f} "
        f"over the last 3 steps; margin {margin[0]:+.2f} → {margin[-1]:+.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--skip-benchmarks", action="store_true", help="only the examples (keeps the figures out)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per benchmark or example"
    )
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    OUT.mkdir(parents=True, exist_ok=True)
    from tinsmith.cluster.launcher import ServerProcess

    runs: dict[str, list[dict[str, float]]] = {}
    example_lines: list[str] = []
    env["TINKER_API_KEY"] = "tml-report"
    print("== examples (one local server)", flush=True)
    with ServerProcess(ROOT / "configs" / "local.yaml") as server:
        for name, script, extra in EXAMPLES:
            log_path = Path(tempfile.mkdtemp(prefix=f"tinsmith-report-{name}-"))
            cmd = [sys.executable, str(ROOT / "examples" / script), "--base-url", server.base_url]
            cmd += ["--log-path", str(log_path), *extra]
            out, seconds, rc = run(cmd, env, args.timeout)
            runs[name] = metrics(log_path)
            summary = example_summary(name, runs[name]) if runs[name] else f"no metrics (exit {rc})"
            print(f"{name}: {summary} ({seconds:.0f} s)", flush=True)
            command = " ".join([f"examples/{script}", *extra])
            example_lines.append(f"| `{command}` | {summary} | {seconds:.0f} s |")
    images = plots(runs)

    sections: list[str] = []
    if not args.skip_benchmarks:
        for title, cmd, what in BENCHMARKS:
            print(f"== {title}: {' '.join(cmd)}", flush=True)
            out, seconds, rc = run(
                [sys.executable, str(ROOT / "benchmarks" / cmd[0]), *cmd[1:]], env, args.timeout
            )
            print(out, flush=True)
            status = "" if rc == 0 else f" — **exit {rc}**"
            command = f"`python benchmarks/{' '.join(cmd)}` ({seconds:.0f} s)"
            sections.append(f"### {title}{status}\n\n{what}. {command}\n\n```\n{out}\n```\n")

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    report = [
        "# tinsmith benchmark report",
        "",
        f"Generated by `make report` (`python benchmarks/report.py`) on {when}; {machine}; no GPU.",
        (
            "Every figure is measured on this machine in the same run as its baseline; "
            "compare ratios, not absolute times."
        ),
        "",
        (
            "## Examples (tinker-cookbook loops against one local "
            "tinsmith, SmolLM2-135M-Instruct, CPU)"
        ),
        "",
        "| example | result | wall time |",
        "|---|---|---|",
        *example_lines,
        "",
        *[f"![{name}](report/{name})" for name in images],
        "",
    ]
    if sections:
        report += ["## Benchmarks", "", *sections]
    (ROOT / "benchmarks" / "REPORT.md").write_text("\n".join(report))
    print(f"wrote {ROOT / 'benchmarks' / 'REPORT.md'} and {len(images)} plots in {OUT}")


if __name__ == "__main__":
    main()
