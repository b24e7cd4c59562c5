"""The trainer's GPU path: bf16, NCCL and DeepSpeed ZeRO 0-3 on one GPU, checked against fp32.

Runs the real ``TrainerWorker`` (no Ray, no server: the GPU machines here have neither) as one
rank per configuration, each in a fresh process so every run initialises NCCL and DeepSpeed anew:
fp32 ZeRO-0 (the reference) and bf16 at ZeRO 0, 1, 2 and 3. Every run trains two tenants
interleaved (rank 16 on every module with cross_entropy; rank 8 on the MLP only with ppo, whose
advantages have mixed signs) for a few AdamW steps on mixed-length datums, restores a third
adapter from the first one's snapshot, and exports the first adapter as the weight sync does.
Prints per run: loss sums, step time, tokens/s, peak GPU memory; then bf16 vs fp32 differences.
On a machine without CUDA it runs the same path on the CPU with gloo (a dry run of the script).

Run: ``python benchmarks/gpu_trainer.py`` (``--random-init CONFIG_DIR`` builds random weights
from a model config where no weights can be fetched).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinsmith.types.internal import TokenDatum

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS = (("float32", 0), ("bfloat16", 0), ("bfloat16", 1), ("bfloat16", 2), ("bfloat16", 3))


def _datums(count: int, lo: int, hi: int, seed: int) -> list[TokenDatum]:
    import numpy as np

    from tinsmith.types.internal import TokenDatum

    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(rng.integers(lo, hi, size=count)):
        n = int(n)
        tokens = [int(t) for t in rng.integers(100, 20000, size=n + 1)]
        extra = {"logprobs": [-2.0] * n, "advantages": [float(a) for a in rng.normal(size=n)]}
        out.append(
            TokenDatum(
                index=i,
                input_tokens=tokens[:-1],
                target_tokens=tokens[1:],
                weights=[1.0] * n,
                extra=extra,
            )
        )
    return out


def _run(
    dtype: str,
    stage: int,
    model_dir: str,
    steps: int,
    datums: int,
    profile: bool,
    out: multiprocessing.Queue,
) -> None:
    try:
        out.put(_train(dtype, stage, model_dir, steps, datums, profile))
    except BaseException as exc:  # reported by the parent
        import traceback

        out.put({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]})


def _train(
    dtype: str, stage: int, model_dir: str, steps: int, count: int, profile: bool
) -> dict[str, object]:
    import torch
    import torch.distributed as dist

    from tinsmith.actors.batching import batch_layout, plan_rank_work
    from tinsmith.actors.trainer import TrainerWorker
    from tinsmith.cluster.launcher import free_port
    from tinsmith.storage.transfer import StorageSite
    from tinsmith.types.internal import AdapterSpec, OptimStepWork, RankWork
    from tinsmith.types.settings import TrainerConfig
    from tinsmith.types.training import AdamParams, LoraConfig

    cuda = torch.cuda.is_available()
    config = TrainerConfig(num_ranks=1, zero_stage=stage, dtype=dtype, micro_batch_tokens=8192)  # type: ignore[arg-type]
    site = StorageSite(data_dir=tempfile.mkdtemp(prefix="tinsmith-gpu-"))
    worker = TrainerWorker(0, 1, "127.0.0.1", free_port(), model_dir, config, site)
    backend = dist.get_backend()
    specs = {
        "a": (LoraConfig(rank=16, seed=1), "cross_entropy"),
        "b": (LoraConfig(rank=8, seed=2, train_attn=False, train_unembed=False), "ppo"),
    }
    for name, (lora, _) in specs.items():
        worker.create_adapter(AdapterSpec(adapter_id=name, lora=lora))
    data = _datums(count, 64, 512, seed=0)
    batches = plan_rank_work(data, 1, batch_layout(config, packable=True))[0]
    tokens = sum(d.length for d in data)
    adam = AdamParams(learning_rate=1e-3, weight_decay=0.01, grad_clip_norm=1.0)
    losses: dict[str, list[float]] = {n: [] for n in specs}
    step_s: list[float] = []
    grad_norms: list[float] = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for name, (_, loss_fn) in specs.items():
            work = RankWork(
                adapter_id=name,
                loss_fn=loss_fn,
                forward_only=False,
                micro_batches=batches,
                grad_scale=1,
            )
            losses[name].append(worker.forward_backward(work).loss_sum)
            metrics = worker.optim_step(OptimStepWork(adapter_id=name, adam=adam))
            if name == "a":
                grad_norms.append(metrics.get("grad_norm:mean", float("nan")))
        if cuda:
            torch.cuda.synchronize()
        step_s.append((time.perf_counter() - start) / len(specs))
    table = ""
    if profile:  # one more step of tenant "a": where its time goes, on the host and on the device
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        work = RankWork(
            adapter_id="a",
            loss_fn="cross_entropy",
            forward_only=False,
            micro_batches=batches,
            grad_scale=1,
        )
        with torch_profile(activities=activities) as prof:
            worker.forward_backward(work)
            worker.optim_step(OptimStepWork(adapter_id="a", adam=adam))
            if cuda:
                torch.cuda.synchronize()
        averages = prof.key_averages()
        table = averages.table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60
        )
        if cuda:
            table += "\n" + averages.table(
                sort_by="self_device_time_total", row_limit=15, max_name_column_width=60
            )
    snap = worker.snapshot("a")
    assert snap is not None
    worker.create_adapter(AdapterSpec(adapter_id="c", lora=specs["a"][0]))
    worker.restore_snapshot("c", snap[1])
    probe = RankWork(
        adapter_id="a",
        loss_fn="cross_entropy",
        forward_only=True,
        micro_batches=batches[:1],
        grad_scale=1,
    )
    lp_a = [d.logprobs for d in worker.forward_backward(probe).datums]
    lp_c = [
        d.logprobs
        for d in worker.forward_backward(probe.model_copy(update={"adapter_id": "c"})).datums
    ]
    restored_diff = max(
        abs(x - y) for ra, rc in zip(lp_a, lp_c, strict=True) for x, y in zip(ra, rc, strict=True)
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        answer = worker.export_adapter("a", str(Path(tmp) / "a"))
        export_s = time.perf_counter() - start
        assert answer is not None and answer[1].path is not None
        exported = answer[1]
        export_bytes = sum(f.stat().st_size for f in Path(exported.path).iterdir())
    timed = step_s[1:] if len(step_s) > 1 else step_s
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "backend": str(backend),
        "dtype": dtype,
        "stage": stage,
        "param_dtype": str(next(iter(worker.lora.named_params("a").values())).dtype),
        "losses": losses,
        "grad_norms": grad_norms,
        "micro_batches": len(batches),
        "tokens": tokens,
        "step_s": sorted(timed)[len(timed) // 2],
        "tokens_per_s": tokens / sorted(timed)[len(timed) // 2],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "restored_logprob_diff": restored_diff,
        "export_s": export_s,
        "export_mib": export_bytes / 2**20,
        "profile": table,
    }


def _random_model(config_dir: str, out_dir: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(config_dir), dtype=torch.float32
    )
    model.save_pretrained(out_dir)
    return out_dir


def _local_model() -> str:
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.model_cache import prepare_all

    root = Path(__file__).resolve().parent.parent
    return str(next(iter(prepare_all(load_config(root / "configs" / "local.yaml")).values())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--random-init", metavar="CONFIG_DIR", help="random weights from this model config"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--datums", type=int, default=32)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--only", nargs="*", metavar="DTYPE:STAGE", help="e.g. bfloat16:3 (default: all five runs)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's table of one more step"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tempfile.mkdtemp(prefix="tinsmith-gpu-")
    model_dir = _random_model(args.random_init, tmp) if args.random_init else _local_model()
    ctx = multiprocessing.get_context("spawn")
    results = []
    runs = [(d, int(s)) for d, s in (o.split(":") for o in args.only)] if args.only else RUNS
    for dtype, stage in runs:
        out: multiprocessing.Queue = ctx.Queue()
        proc = ctx.Process(
            target=_run, args=(dtype, stage, model_dir, args.steps, args.datums, args.profile, out)
        )
        start = time.perf_counter()
        proc.start()
        result = out.get(timeout=900)
        proc.join(timeout=60)
        result |= {"dtype": dtype, "stage": stage, "wall_s": time.perf_counter() - start}
        results.append(result)
        if "error" in result:
            print(f"{dtype} ZeRO-{stage}: FAILED {result['error']}\n{result['trace']}", flush=True)
            continue
        losses = {k: [round(x, 3) for x in v] for k, v in result["losses"].items()}
        print(
            f"{dtype:8s} ZeRO-{stage} on {result['device']} ({result['backend']}, "
            f"LoRA params {result['param_dtype']}): "
            f"{result['tokens']} tokens in {result['micro_batches']} micro-batches; median step "
            f"{result['step_s']:.3f} s = {result['tokens_per_s']:.0f} tokens/s; "
            f"peak GPU {result['peak_gib']:.2f} GiB; "
            f"export {result['export_s'] * 1e3:.0f} ms ({result['export_mib']:.1f} MiB); "
            f"restored adapter's logprobs differ by {result['restored_logprob_diff']:.2e}; "
            f"wall {result['wall_s']:.0f} s\n    losses {losses}\n    grad norms (a) "
            f"{[round(g, 3) for g in result['grad_norms']]}",
            flush=True,
        )
        if result["profile"]:
            print(result["profile"], flush=True)
    ok = [r for r in results if "error" not in r]
    ref = next((r for r in ok if r["dtype"] == "float32"), None)
    if ref is not None:
        for r in ok:
            if r is ref:
                continue
            diffs = {
                name: max(
                    abs(x - y) / abs(y)
                    for x, y in zip(r["losses"][name], ref["losses"][name], strict=True)
                )
                for name in ref["losses"]
            }
            print(
                f"bf16 ZeRO-{r['stage']} vs fp32 ZeRO-0: largest relative loss difference {diffs}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    sys.exit(0 if len(ok) == len(results) else 1)


if __name__ == "__main__":
    main()
