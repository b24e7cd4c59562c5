"""Training throughput: tinsmith through the SDK vs. a bare in-process transformers+peft step.

Same model (SmolLM2-135M), LoRA rank 8 on Tinker's default targets, AdamW, fp32, on this machine.
Two batches: uniform (8 x 128 tokens) and mixed (16 datums of 64-512 tokens, fixed seed), which
the bare loop runs as one would write it: micro-batches of 8 datums in request order, each padded
to its longest. The bare step runs in a process of its own three times: with no server running
(before the server starts and after it stops: the baseline), and (uniform batch only: the padded
mixed loop needs ~14 GB, too much beside the server on 24 GB) with the server up and idle after
the SDK's steps (a bare process alive during them slowed them by up to 15%). Prints
tokens/s of each, the ratios (targets: uniform >= 0.95x the no-server bare step, mixed >= 1.3x
the padded bare loop) and tinsmith's padding fraction (target 0).
Run: `python benchmarks/train_step.py`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import BATCH, LORA_RANK, MODEL, ROOT, SEQ_LEN, fixed_batch, median
from benchmarks.proc_stats import command, descendants, idle_load, minor_faults
from tinsmith.actors.malloc_tuning import IDLE_RELEASE_SECONDS

BARE_MICRO_BATCH = 8  # datums per padded micro-batch of the bare loop


def mixed_batch(seed: int = 7) -> list[list[int]]:
    """16 sequences of 64-512 tokens (+1: inputs are [:-1], targets [1:]), lengths uniform."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(64, 513, size=16)
    return [[int(t) for t in rng.integers(100, 49152, size=int(n) + 1)] for n in lengths]


def bare_step(model_dir: str, batch: list[list[int]]) -> Callable[[], None]:
    """One plain training step: micro-batches of BARE_MICRO_BATCH datums in order, each right-
    padded to its longest (attention mask, padding's loss zeroed), summed token NLL, backward,
    AdamW, logprobs to Python. LoRA rank LORA_RANK on Tinker's default targets for the model's
    family (tinsmith's own mapping, so both sides train the same parameters)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tinsmith.actors.lora_adapters import LORA_ALPHA, lora_targets
    from tinsmith.actors.rank_setup import auto_model_class
    from tinsmith.types.architectures import read_model_shape
    from tinsmith.types.training import LoraConfig as TinkerLora

    torch.set_num_threads(os.cpu_count() or 1)
    arch = read_model_shape(Path(model_dir)).arch
    model = auto_model_class(arch).from_pretrained(model_dir, dtype=torch.float32)
    model.requires_grad_(False)
    targets = lora_targets(arch, TinkerLora(rank=LORA_RANK))
    lora = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        target_modules=targets.modules,
        target_parameters=targets.parameters or None,
    )
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    micro = []
    for i in range(0, len(batch), BARE_MICRO_BATCH):
        rows = batch[i : i + BARE_MICRO_BATCH]
        longest = max(len(r) - 1 for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        tgt = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r) - 1] = torch.tensor(r[:-1])
            tgt[j, : len(r) - 1] = torch.tensor(r[1:])
            mask[j, : len(r) - 1] = 1
        padded = bool((mask == 0).any())
        micro.append((ids, tgt, mask if padded else None, mask))

    def step() -> None:
        for ids, tgt, attention, mask in micro:
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none"
            )
            (nll * mask.reshape(-1)).sum().backward()
            _ = (-nll).detach().tolist()  # the server returns per-token logprobs too
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_worker(model_dir: str, kind: str) -> None:
    """Child-process mode: one bare step per line on stdin, its seconds and page faults on stdout.

    The bare loop runs in its own clean process (no SDK threads, no server client) so the
    baseline is not handicapped by the measuring process.
    """
    step = bare_step(model_dir, fixed_batch() if kind == "uniform" else mixed_batch())
    print("ready", flush=True)
    for _ in sys.stdin:
        faults = minor_faults(os.getpid())
        start = time.perf_counter()
        step()
        took = time.perf_counter() - start
        print(f"{took:.6f} {minor_faults(os.getpid()) - faults}", flush=True)


class BareProcess:
    def __init__(self, model_dir: str, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--bare-worker", model_dir, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        while self.proc.stdout.readline().strip() != "ready":
            pass
        self.faults: list[int] = []

    def step(self) -> float:
        """One step's seconds (its page faults go to ``faults``)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        seconds, faults = self.proc.stdout.readline().split()
        self.faults.append(int(faults))
        return float(seconds)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


FAULTS: dict[str, list[int]] = {}  # page faults per step, by who stepped


def bare_alone(model_dir: str, kind: str, steps: int, warmup: int) -> list[float]:
    """Seconds of ``steps`` bare steps in a fresh process (its page faults into FAULTS)."""
    bare = BareProcess(model_dir, kind)
    times = [bare.step() for _ in range(warmup + steps)][warmup:]
    FAULTS.setdefault(f"bare {kind}", []).extend(bare.faults[warmup:])
    bare.close()
    return times


def scaling(config: str, steps: int, warmup: int) -> None:
    """1 vs 2 ranks on a mixed-length batch, the padding fraction, and trainer memory per tenant."""
    import json
    import urllib.request

    import numpy as np
    import tinker
    from tinker import types

    from tinsmith.cluster.launcher import ServerProcess

    rng = np.random.default_rng(3)
    lengths = rng.integers(SEQ_LEN // 2, SEQ_LEN * 2, size=2 * BATCH)
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints(
                [int(t) for t in rng.integers(100, 49152, size=n)]
            ),
            loss_fn_inputs={
                "target_tokens": [int(t) for t in rng.integers(100, 49152, size=n)],
                "weights": [1.0] * n,
            },
        )
        for n in lengths
    ]
    tokens = int(lengths.sum())

    def memory(base_url: str, model: str) -> tuple[int, int]:
        """(RSS, adapter weights + optimizer state) of the model's first trainer rank, in bytes."""
        request = urllib.request.Request(
            f"{base_url}/api/v1/tinsmith/status", headers={"X-API-Key": "tml-bench"}
        )
        with urllib.request.urlopen(request) as resp:
            status = json.loads(resp.read())
        worker = next(m for m in status if m["base_model"] == model)["workers"][0]
        return int(worker["rss_bytes"]), int(worker["adapter_param_bytes"])

    def settled_memory(base_url: str, model: str) -> tuple[int, int]:
        """``memory`` once the rank has been idle long enough to give its kept heap back, so
        the two readings compare memory held, not the last step's reusable heap."""
        time.sleep(IDLE_RELEASE_SECONDS + 1.5)
        return memory(base_url, model)

    with ServerProcess(config) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        results: dict[str, float] = {}
        steps_s: dict[str, tuple[float, float]] = {}
        padding: list[float] = []
        for model in ("bench/one-rank", "bench/two-ranks", "bench/two-ranks-zero2"):
            tc = service.create_lora_training_client(base_model=model, rank=LORA_RANK).result()
            times, trainer = [], []
            for i in range(warmup + steps):
                start = time.perf_counter()
                metrics = tc.forward_backward(data, "cross_entropy").result().metrics
                tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
                    trainer.append(metrics["trainer_seconds:max"])
                padding.append(
                    metrics["padding_tokens:sum"] / (metrics["padding_tokens:sum"] + tokens)
                )
            results[model] = tokens / median(times)
            steps_s[model] = (median(times), median(trainer))
        before = settled_memory(server.base_url, "bench/one-rank")
        extra = [
            service.create_lora_training_client(base_model="bench/one-rank", rank=32).result()
            for _ in range(4)
        ]
        for tc in extra:
            tc.forward_backward(data[:2], "cross_entropy").result()
            tc.optim_step(types.AdamParams()).result()
        after = settled_memory(server.base_url, "bench/one-rank")
    one, two = results["bench/one-rank"], results["bench/two-ranks"]
    print(
        f"mixed lengths {int(lengths.min())}..{int(lengths.max())}, {len(lengths)} "
        f"datums, {tokens} tokens per step"
    )
    setups = (
        ("1 rank, ZeRO-1: ", "bench/one-rank"),
        ("2 ranks, ZeRO-1:", "bench/two-ranks"),
        ("2 ranks, ZeRO-2:", "bench/two-ranks-zero2"),
    )
    for label, model in setups:
        step, trainer = steps_s[model]
        busy = f"slowest rank's forward+backward {trainer:.2f} s"
        print(f"{label} {results[model]:8.1f} tokens/s  (median step {step:.2f} s, {busy})")
    print(f"ratio 2 ranks / 1 rank: {two / one:.3f} (target >= 1.0 on this machine)")
    zero2 = results["bench/two-ranks-zero2"] / one
    print(
        f"  (2 ZeRO-2 ranks / 1 rank: {zero2:.3f}; ZeRO-2 reduces gradients after "
        "every backward, ZeRO-1 once a step)"
    )
    print(f"padding fraction of micro-batches: {max(padding):.3f} (target <= 0.10)")
    per_rss = (after[0] - before[0]) / len(extra) / 2**20
    per_state = (after[1] - before[1]) / len(extra) / 2**20
    print(
        f"per added rank-32 tenant: adapter + optimizer state {per_state:.1f} MiB, "
        f"trainer RSS {per_rss:+.1f} MiB"
    )
    print(
        f"  (both read {IDLE_RELEASE_SECONDS + 1.5:.1f} s after the rank's last call, once it has "
        "given its kept heap back)"
    )


def _data(batch: list[list[int]]) -> list[object]:
    from tinker import types

    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(seq[:-1]),
            loss_fn_inputs={"target_tokens": seq[1:], "weights": [1.0] * (len(seq) - 1)},
        )
        for seq in batch
    ]


def main() -> None:
    import tinker
    from tinker import types

    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.launcher import ServerProcess
    from tinsmith.cluster.model_cache import prepare_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--steps", type=int, default=6, help="measured steps of each kind")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--batches", nargs="+", choices=("uniform", "mixed"), default=["uniform", "mixed"]
    )
    parser.add_argument(
        "--bare-worker", nargs=2, metavar=("MODEL_DIR", "KIND"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="1 vs 2 ranks, padding and memory per tenant (configs/bench-ranks.yaml)",
    )
    args = parser.parse_args()
    if args.bare_worker:
        bare_worker(*args.bare_worker)
        return
    if args.scaling:
        scaling(str(ROOT / "configs" / "bench-ranks.yaml"), args.steps, args.warmup)
        return
    batches = {k: fixed_batch() if k == "uniform" else mixed_batch() for k in args.batches}
    tokens = {kind: sum(len(seq) - 1 for seq in batch) for kind, batch in batches.items()}
    model_dir = str(prepare_all(load_config(args.config))[MODEL])
    before = {k: bare_alone(model_dir, k, args.steps, args.warmup) for k in batches}
    sdk: dict[str, list[float]] = {}
    beside: dict[str, list[float]] = {}
    trainer: dict[str, list[float]] = {}
    padding: dict[str, float] = {}
    with ServerProcess(args.config) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key="tml-bench")
        tc = service.create_lora_training_client(base_model=MODEL, rank=LORA_RANK).result()
        assert server.proc is not None
        tree = descendants(server.proc.pid)
        rank = next(p for p in tree if command(p).startswith("ray::TrainerWorker"))
        for kind, batch in batches.items():
            data = _data(batch)
            for i in range(args.warmup + args.steps):
                faults = minor_faults(rank)
                start = time.perf_counter()
                fb = tc.forward_backward(data, "cross_entropy")  # type: ignore[arg-type]
                opt = tc.optim_step(types.AdamParams(learning_rate=1e-4))
                metrics = fb.result().metrics
                opt.result()
                if i >= args.warmup:
                    sdk.setdefault(kind, []).append(time.perf_counter() - start)
                    trainer.setdefault(kind, []).append(metrics.get("trainer_seconds:max", 0.0))
                    FAULTS.setdefault(f"trainer {kind}", []).append(minor_faults(rank) - faults)
            padding[kind] = metrics["padding_tokens:sum"] / (
                metrics["padding_tokens:sum"] + tokens[kind]
            )
        # The idle server's cost to a process beside it, measured after the SDK's steps (a bare
        # process alive during them slowed them too). Uniform batch only: the padded mixed loop
        # holds ~14 GB, and beside the server on 24 GB Ray's memory monitor kills its workers.
        time.sleep(2)
        load = idle_load(tree, 10.0)
        if "uniform" in batches:
            beside["uniform"] = bare_alone(model_dir, "uniform", args.steps, args.warmup)
    after = {k: bare_alone(model_dir, k, args.steps, args.warmup) for k in batches}
    setup = f"LoRA rank {LORA_RANK}, fp32, {os.cpu_count()} CPUs"
    print(f"{MODEL}, {setup}; tokens/s (median step seconds)")
    for kind in batches:
        n = tokens[kind]

        def rate(times: list[float], n: int = n) -> str:
            return f"{n / median(times):8.1f} ({median(times):.2f} s)"

        alone = n / median(before[kind] + after[kind])
        ours = n / median(sdk[kind])
        label = "8 x 128" if kind == "uniform" else f"16 datums, {n} tokens"
        print(f"{kind} batch ({label}):")
        print(f"  bare, no server, before:        {rate(before[kind])}")
        print(f"  bare, no server, after:         {rate(after[kind])}")
        if kind in beside:
            print(f"  bare, beside the idle server:   {rate(beside[kind])}")
        print(f"  tinsmith via tinker SDK:        {rate(sdk[kind])}")
        print(f"    of which trainer forward+backward: {median(trainer[kind]):.2f} s")
        print(f"  tinsmith padding fraction:      {padding[kind]:.3f} (target 0)")
        bare_faults = median([float(f) for f in FAULTS[f"bare {kind}"]])
        ours_faults = median([float(f) for f in FAULTS[f"trainer {kind}"]])
        print(f"  page faults a step: bare {bare_faults:,.0f}, trainer {ours_faults:,.0f}")
        print(f"  ratio to the no-server bare step:   {ours / alone:.3f}")
        if kind in beside:
            print(f"  ratio to the bare step beside it:   {ours / (n / median(beside[kind])):.3f}")
    print("targets: uniform >= 0.95 (no server) and >= 1.0; mixed >= 1.3 (no server)")
    cpu = sum(p.cpu for p in load)
    wakeups = sum(p.wakeups for p in load)
    print(f"idle server: {100 * cpu:.1f}% of a core, {wakeups:,.0f} wake-ups/s; busiest:")
    for p in load[:6]:
        print(f"  {p.wakeups:7.0f}/s {100 * p.cpu:5.1f}%  {p.command}")


if __name__ == "__main__":
    main()
