"""ZeRO 0, 1, 2 and 3 on two ranks give the losses and adapters of ZeRO 0 on one rank.

The trainer ranks are the real `TrainerWorker` (DeepSpeed, peft, gloo), started here as two plain
processes that rendezvous through torch.distributed, so every stage runs without a server and
its Ray cluster beside the session's; each process runs every stage in turn, each on a fresh
worker (starting processes is most of a run's time on a CPU). Each run trains two tenants
interleaved (rank 8 on every module; rank 4 on the MLP only) for 3 steps of AdamW with weight
decay and clipping active, over micro-batches of different lengths that leave rank 1 one short
(its dummy backward runs); after 2 steps a third adapter is restored from the first one's
snapshot and trained alongside. Then: forward-only logprobs, one tenant unloaded, and the
weight-sync export (a gather under ZeRO-3), which must equal the adapter.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.integration.helpers import TINY_MODEL
from tinsmith.cluster.launcher import free_port

if TYPE_CHECKING:
    from tinsmith.actors.trainer import TrainerWorker

STEPS = 3
MICRO_BATCH_TOKENS = 128
LENGTHS = (40, 64, 33, 57, 20)
# bf16 runs on few tokens: on a CPU without bf16 instructions (AVX2 only) PyTorch's bf16 matmuls
# are ~30x slower than fp32 ones, and LENGTHS' 214 tokens took 350 s per run there.
BF16_LENGTHS = (16, 10)


def _model_dir() -> str:
    """The tiny Qwen3's directory: the stages' agreement holds for any model, and its steps take
    milliseconds where SmolLM2's took most of this module's four minutes."""
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.model_cache import prepare_model

    config = load_config(ROOT / "configs" / "models.yaml")
    spec = next(m for m in config.models if m.name == TINY_MODEL)
    return str(prepare_model(spec, config.resolved_cache_dir()))


class Spec(NamedTuple):
    """One training run in a rank process: its ZeRO stage, dtype and datum lengths; ``features``:
    the long-sequence features' runs (``_train_features``) instead of the stage comparison."""

    stage: int
    dtype: str = "float32"
    lengths: tuple[int, ...] = LENGTHS
    features: bool = False


def _run_rank(
    rank: int,
    world: int,
    port: int,
    specs: list[Spec],
    model_dir: str,
    out: multiprocessing.Queue,
) -> None:
    """One trainer rank running each of ``specs`` in turn, each on a fresh ``TrainerWorker`` (the
    process group is joined once: starting processes is most of a run's time on a CPU); puts
    (rank, one result per spec) on ``out``."""
    import gc

    # The workers' data dirs (_worker) go under a scratch dir removed when this rank is done.
    with tempfile.TemporaryDirectory(prefix="tinsmith-zero-") as scratch:
        tempfile.tempdir = scratch
        try:
            results = []
            for spec in specs:
                train = _train_features if spec.features else _train
                results.append(train(rank, world, port, spec, model_dir))
                gc.collect()
            out.put((rank, results))
        except BaseException as exc:  # the parent reports it
            out.put((rank, f"{type(exc).__name__}: {exc}"))
            raise


def _worker(rank: int, world: int, port: int, spec: Spec, model_dir: str) -> TrainerWorker:
    """A fresh trainer rank at the spec's ZeRO stage and dtype, one thread, its own data dir."""
    from tinsmith.actors.trainer import TrainerWorker
    from tinsmith.storage.transfer import StorageSite
    from tinsmith.types.settings import TrainerConfig

    config = TrainerConfig(
        num_ranks=world,
        zero_stage=spec.stage,  # type: ignore[arg-type]
        torch_threads=1,
        dtype=spec.dtype,  # type: ignore[arg-type]
    )
    site = StorageSite(data_dir=tempfile.mkdtemp(prefix="rank-"))
    return TrainerWorker(rank, world, "127.0.0.1", port, model_dir, config, site)


def _train(rank: int, world: int, port: int, spec: Spec, model_dir: str) -> dict[str, object]:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from tinsmith.actors.batching import plan_rank_work
    from tinsmith.types.internal import (
        AdapterSpec,
        BatchLayout,
        OptimStepWork,
        RankWork,
        TokenDatum,
    )
    from tinsmith.types.training import AdamParams, LoraConfig

    worker = _worker(rank, world, port, spec, model_dir)
    specs = {
        "a": LoraConfig(rank=8, seed=1),
        "b": LoraConfig(rank=4, seed=2, train_attn=False, train_unembed=False),
    }
    for name, lora in specs.items():
        worker.create_adapter(AdapterSpec(adapter_id=name, lora=lora))
    rng = random.Random(0)
    datums = []
    for i, n in enumerate(spec.lengths):
        tokens = [rng.randrange(100, 20000) for _ in range(n + 1)]
        datums.append(
            TokenDatum(
                index=i, input_tokens=tokens[:-1], target_tokens=tokens[1:], weights=[1.0] * n
            )
        )
    layout = BatchLayout(micro_batch_tokens=MICRO_BATCH_TOKENS, packing=False)
    batches = plan_rank_work(datums, world, layout)[rank]
    # eps 1e-6: with a smaller one, AdamW moves an element whose gradient is at fp32 rounding level
    # by a whole step, in a direction set by the summation order (which differs across ranks).
    # AdamW's step lr * g / (|g| + eps) moves by at most lr / eps = 1e3 times a change of g, and
    # clipping to a norm of 0.05 scales the gradients (and their rounding-level differences, ~1e-10
    # after it) down, so the adapters below agree to ~1e-7 (measured 2.3e-7), whatever the machine.
    adam = AdamParams(learning_rate=1e-3, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.05)
    losses: dict[str, list[float]] = {}
    norms: dict[str, list[float]] = {}  # before clipping
    for step in range(STEPS):
        if step == 2:  # "c" starts from "a"'s snapshot and from now on trains in step with it
            snap = [worker.snapshot("a")]
            dist.broadcast_object_list(snap, src=0)
            assert snap[0] is not None
            worker.create_adapter(AdapterSpec(adapter_id="c", lora=specs["a"]))
            worker.restore_snapshot("c", snap[0][1])
        for name in worker.engines:
            work = RankWork(
                adapter_id=name,
                loss_fn="cross_entropy",
                forward_only=False,
                micro_batches=batches,
                grad_scale=world,
            )
            losses.setdefault(name, []).append(worker.forward_backward(work).loss_sum)
        for name in worker.engines:
            metrics = worker.optim_step(OptimStepWork(adapter_id=name, adam=adam))
            norms.setdefault(name, []).append(metrics["grad_norm:mean"])
    forward = worker.forward_backward(
        RankWork(
            adapter_id="a",
            loss_fn="cross_entropy",
            forward_only=True,
            micro_batches=batches,
            grad_scale=world,
        )
    )
    logprobs = {d.index: d.logprobs for d in forward.datums}
    # one datum: the other rank has nothing to run, but under ZeRO-3 it must join the gathers
    alone = plan_rank_work(datums[:1], world, layout)[rank]
    forward = worker.forward_backward(
        RankWork(
            adapter_id="a",
            loss_fn="cross_entropy",
            forward_only=True,
            micro_batches=alone,
            grad_scale=world,
        )
    )
    alone_logprobs = {d.index: d.logprobs for d in forward.datums}
    params = worker.lora.named_params("a").values()
    held = sum(getattr(p, "ds_tensor", p).numel() for p in params) / sum(
        getattr(p, "ds_numel", p.numel()) for p in params
    )
    worker.unload_adapter("b")  # the others keep working
    adapters = {name: worker.adapter_state(name) for name in worker.engines}
    with tempfile.TemporaryDirectory() as tmp:
        answer = worker.export_adapter("a", str(Path(tmp) / "a"))
        exported = answer[1] if answer is not None else None
        files = (
            load_file(str(Path(exported.path) / "adapter_model.safetensors"))
            if exported and exported.path
            else {}
        )
        export = {k: v.flatten().tolist() for k, v in files.items()}
    dist.barrier()
    return {
        "losses": losses,
        "norms": norms,
        "logprobs": logprobs,
        "alone": alone_logprobs,
        "held": held,
        "export": export,
        "adapters": adapters if rank == 0 else {},
    }


# The long-sequence features against one datum per micro-batch with all of them off: each alone,
# then all three together. Chunks of 16 tokens split every datum; packed rows of up to 128 tokens
# hold several datums (and leave rank 1 one micro-batch short, so its dummy pass runs).
FEATURES = {
    "one datum at a time": {"micro_batch_tokens": 1, "packing": False},
    "checkpointing": {"micro_batch_tokens": 1, "packing": False, "checkpoint_above_tokens": 0},
    "chunked logprobs": {"micro_batch_tokens": 1, "packing": False, "logprob_chunk_tokens": 16},
    "packed": {"micro_batch_tokens": MICRO_BATCH_TOKENS, "packing": True},
    "all three": {
        "micro_batch_tokens": MICRO_BATCH_TOKENS,
        "packing": True,
        "checkpoint_above_tokens": 0,
        "logprob_chunk_tokens": 16,
    },
}
FEATURE_LOSSES = ("cross_entropy", "ppo")


def _train_features(
    rank: int, world: int, port: int, spec: Spec, model_dir: str
) -> dict[str, object]:
    """Per loss and layout of ``FEATURES``: a fresh adapter (same seed), its loss, one AdamW step,
    then its forward logprobs and weights (which show the gradients agreed)."""
    import torch.distributed as dist

    from tinsmith.actors.batching import plan_rank_work
    from tinsmith.types.internal import (
        AdapterSpec,
        BatchLayout,
        OptimStepWork,
        RankWork,
        TokenDatum,
    )
    from tinsmith.types.training import AdamParams, LoraConfig

    worker = _worker(rank, world, port, spec, model_dir)
    rng = random.Random(1)
    datums = []
    for i, n in enumerate(spec.lengths):
        tokens = [rng.randrange(100, 20000) for _ in range(n + 1)]
        # the sampler's logprobs around the tiny model's (~ -10.8): ratios clip on both sides
        sampled = [rng.uniform(-11.5, -10.0) for _ in range(n)]
        advantages = [rng.uniform(-1.0, 1.0) for _ in range(n)]
        datums.append(
            TokenDatum(
                index=i,
                input_tokens=tokens[:-1],
                target_tokens=tokens[1:],
                weights=[rng.choice((0.0, 1.0, 1.0)) for _ in range(n)],
                extra={"logprobs": sampled, "advantages": advantages},
            )
        )
    adam = AdamParams(learning_rate=1e-3, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.05)
    out: dict[str, object] = {}
    for loss in FEATURE_LOSSES:
        for k, (label, fields) in enumerate(FEATURES.items()):
            name = f"{loss}_{k}"
            worker.create_adapter(AdapterSpec(adapter_id=name, lora=LoraConfig(rank=8, seed=1)))
            batches = plan_rank_work(datums, world, BatchLayout(**fields))[rank]  # type: ignore[arg-type]

            def run(
                forward_only: bool, name: str = name, batches: list = batches, loss: str = loss
            ) -> object:
                work = RankWork(
                    adapter_id=name,
                    loss_fn=loss,
                    forward_only=forward_only,
                    micro_batches=batches,
                    grad_scale=world,
                )
                return worker.forward_backward(work)

            losses = [run(False).loss_sum]  # type: ignore[attr-defined]
            worker.optim_step(OptimStepWork(adapter_id=name, adam=adam))
            forward = run(True)
            out[f"{loss} / {label}"] = {
                "losses": losses,
                "logprobs": {d.index: d.logprobs for d in forward.datums},  # type: ignore[attr-defined]
                "packed": [b.packed for b in batches],
                "adapter": worker.adapter_state(name),
            }
            worker.unload_adapter(name)
    dist.barrier()
    return out


class _Ranks(NamedTuple):
    """Rank processes started on ``specs`` and the queue they answer on."""

    world: int
    specs: list[Spec]
    procs: list[multiprocessing.process.BaseProcess]
    out: multiprocessing.Queue


def _start(world: int, specs: list[Spec], model_dir: str) -> _Ranks:
    """Start ``world`` rank processes that run through ``specs``."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_run_rank, args=(r, world, port, specs, model_dir, out))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    return _Ranks(world, specs, procs, out)


def _collect(ranks: _Ranks) -> list[dict[str, object]]:
    """Per spec: rank 0's adapters and the loss sums over ranks."""
    per_rank: dict[int, list[dict[str, object]]] = {}
    try:
        for _ in range(ranks.world):
            rank, result = ranks.out.get(timeout=900)
            assert isinstance(result, list), f"{ranks.world} rank(s), rank {rank} failed: {result}"
            per_rank[rank] = result
    except queue.Empty:
        pytest.fail(f"{ranks.world} rank(s) did not finish {ranks.specs} in 900 s")
    finally:
        for p in ranks.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [
        _merge_features({r: per_rank[r][i] for r in per_rank})
        if spec.features
        else _merge({r: per_rank[r][i] for r in per_rank})
        for i, spec in enumerate(ranks.specs)
    ]


def _merge(results: dict[int, dict[str, object]]) -> dict[str, object]:
    """One run's results over its ranks: loss sums, every datum's logprobs, rank 0's adapters."""
    summed = {
        name: np.sum([results[r]["losses"][name] for r in results], axis=0)  # type: ignore[index]
        for name in results[0]["losses"]  # type: ignore[union-attr]
    }
    logprobs = {i: lp for r in results.values() for i, lp in r["logprobs"].items()}  # type: ignore[attr-defined]
    alone = {i: lp for r in results.values() for i, lp in r["alone"].items()}  # type: ignore[attr-defined]
    held = [results[r]["held"] for r in sorted(results)]
    merged = {"losses": summed, "logprobs": logprobs, "alone": alone, "held": held}
    return merged | {k: results[0][k] for k in ("adapters", "export", "norms")}


def _merge_features(results: dict[int, dict[str, object]]) -> dict[str, object]:
    """Per loss and layout: loss sums over ranks, every datum's logprobs, rank 0's adapter."""
    merged: dict[str, object] = {}
    for key in results[0]:
        runs = [results[r][key] for r in sorted(results)]
        merged[key] = {
            "losses": np.sum([run["losses"] for run in runs], axis=0),  # type: ignore[index]
            "logprobs": {i: lp for run in runs for i, lp in run["logprobs"].items()},  # type: ignore[index]
            "packed": [p for run in runs for p in run["packed"]],  # type: ignore[index]
            "adapter": runs[0]["adapter"],  # type: ignore[index]
        }
    return merged


STAGES = (0, 1, 2, 3)
FEATURE_STAGES = (1, 3)
BF16_SPECS = [Spec(0, "float32", BF16_LENGTHS), Spec(0, "bfloat16", BF16_LENGTHS)]
BF16_SPECS.append(Spec(2, "bfloat16", BF16_LENGTHS))


@pytest.fixture(scope="module")
def runs() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """One rank process (the fp32 ZeRO-0 reference, then the bf16 check's three runs) and two
    rank processes running every ZeRO stage in turn, started together: their starts overlap."""
    model_dir = _model_dir()
    one = _start(1, [Spec(0), *BF16_SPECS], model_dir)
    features = [Spec(stage, features=True) for stage in FEATURE_STAGES]
    two = _start(2, [Spec(stage) for stage in STAGES] + features, model_dir)
    return _collect(one), _collect(two)


@pytest.fixture(scope="module")
def one_rank(runs: tuple[list[dict[str, object]], object]) -> list[dict[str, object]]:
    return runs[0]


@pytest.fixture(scope="module")
def reference(one_rank: list[dict[str, object]]) -> dict[str, object]:
    return one_rank[0]


@pytest.fixture(scope="module")
def two_ranks(runs: tuple[object, list[dict[str, object]]]) -> dict[int, dict[str, object]]:
    return dict(zip(STAGES, runs[1][: len(STAGES)], strict=True))


@pytest.fixture(scope="module")
def features(runs: tuple[object, list[dict[str, object]]]) -> dict[int, dict[str, object]]:
    return dict(zip(FEATURE_STAGES, runs[1][len(STAGES) :], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_at_each_zero_stage_match_one_rank_at_zero_0(
    stage: int, reference: dict[str, object], two_ranks: dict[int, dict[str, object]]
) -> None:
    got = two_ranks[stage]
    ref_losses, got_losses = reference["losses"], got["losses"]
    assert isinstance(ref_losses, dict) and isinstance(got_losses, dict)
    print(f"ZeRO-{stage}, 2 ranks:", {k: v.tolist() for k, v in got_losses.items()})
    print("ZeRO-0, 1 rank:", {k: v.tolist() for k, v in ref_losses.items()})
    assert sorted(got_losses) == ["a", "b", "c"]
    # under ZeRO-3 each rank holds half of every adapter parameter, else all of it
    assert got["held"] == ([0.5, 0.5] if stage == 3 else [1.0, 1.0]), got["held"]
    # Tolerance: fp32 sums of ~210 token losses, grouped differently across ranks.
    for name in ref_losses:
        np.testing.assert_allclose(
            got_losses[name], ref_losses[name], atol=1e-3, rtol=1e-6, err_msg=name
        )
    ref_norms, got_norms = reference["norms"], got["norms"]
    assert isinstance(ref_norms, dict) and isinstance(got_norms, dict)
    for name in ref_norms:  # the global gradient norm before clipping, which every stage reports
        np.testing.assert_allclose(
            got_norms[name], ref_norms[name], rtol=1e-4, err_msg=f"grad norm {name}"
        )
    ref_adapters, got_adapters = reference["adapters"], got["adapters"]
    assert isinstance(ref_adapters, dict) and isinstance(got_adapters, dict)
    # Tolerance: 1% of one step (lr 1e-3); gradients differ in fp32 summation order only.
    worst = 0.0
    for name, tensors in ref_adapters.items():
        assert sorted(got_adapters[name]) == sorted(tensors)
        for key, value in tensors.items():
            np.testing.assert_allclose(
                got_adapters[name][key], value, atol=1e-5, rtol=0, err_msg=f"{name} {key}"
            )
            worst = max(worst, float(np.abs(np.subtract(got_adapters[name][key], value)).max()))
    print(f"ZeRO-{stage}: largest adapter difference from ZeRO-0 on one rank {worst:.2e}")
    # "c" (restored from "a"'s snapshot after 2 steps) ends where "a" does
    for key, value in got_adapters["a"].items():
        np.testing.assert_allclose(
            got_adapters["c"][key], value, atol=1e-6, rtol=0, err_msg=f"c {key}"
        )
    assert sorted(got_adapters) == ["a", "c"]  # "b" was unloaded
    ref_logprobs, got_logprobs = reference["logprobs"], got["logprobs"]
    assert isinstance(ref_logprobs, dict) and isinstance(got_logprobs, dict)
    assert sorted(got_logprobs) == list(range(len(LENGTHS)))
    for i, lp in ref_logprobs.items():
        np.testing.assert_allclose(
            got_logprobs[i], lp, atol=1e-4, rtol=0, err_msg=f"forward logprobs of datum {i}"
        )
    alone = got["alone"]
    assert isinstance(alone, dict) and list(alone) == [0]
    np.testing.assert_allclose(
        alone[0], got_logprobs[0], atol=1e-5, rtol=0, err_msg="one datum on two ranks"
    )
    export = got["export"]
    assert isinstance(export, dict) and sorted(export) == sorted(got_adapters["a"])
    for key, value in got_adapters["a"].items():
        np.testing.assert_array_equal(export[key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("stage", FEATURE_STAGES)
@pytest.mark.parametrize("loss", FEATURE_LOSSES)
def test_checkpointing_chunked_logprobs_and_packing_change_nothing(
    stage: int, loss: str, features: dict[int, dict[str, object]]
) -> None:
    """Each feature, and all three together, against one datum per micro-batch with none of them:
    the same loss, adapter after an AdamW step, and forward logprobs then (fp32, two ranks)."""
    runs = features[stage]
    reference = runs[f"{loss} / one datum at a time"]
    assert isinstance(reference, dict) and not any(reference["packed"])
    for label in list(FEATURES)[1:]:
        got = runs[f"{loss} / {label}"]
        assert isinstance(got, dict)
        assert any(got["packed"]) == ("packed" in label or label == "all three"), label
        # Tolerance: the same arithmetic; packing changes matmul shapes (fp32 rounding of ~1e-7
        # per logprob, summed over ~200 tokens), the rest recomputes the same operations.
        np.testing.assert_allclose(got["losses"], reference["losses"], rtol=1e-5, err_msg=label)
        for i, lp in reference["logprobs"].items():
            np.testing.assert_allclose(
                got["logprobs"][i], lp, atol=1e-5, rtol=0, err_msg=f"{label}: datum {i}"
            )
        worst = 0.0
        for key, value in reference["adapter"].items():
            # AdamW with eps 1e-6 and clipping to 0.05, as in the ZeRO comparison above
            np.testing.assert_allclose(
                got["adapter"][key], value, atol=1e-5, rtol=0, err_msg=f"{label}: {key}"
            )
            worst = max(worst, float(np.abs(np.subtract(got["adapter"][key], value)).max()))
        print(f"ZeRO-{stage} {loss}, {label}: largest adapter difference {worst:.2e}")


def _lora_b(adapters: dict[str, dict[str, list[float]]], name: str) -> np.ndarray:
    """An adapter's lora_B tensors, concatenated: they start at zero, so they hold its updates."""
    return np.concatenate([v for k, v in sorted(adapters[name].items()) if "lora_B" in k])


@pytest.mark.slow
def test_bf16_optimizers_agree_and_follow_fp32(one_rank: list[dict[str, object]]) -> None:
    """bf16 on one rank: DeepSpeed's unfused bf16 optimizer (ZeRO-0) and its ZeRO-2 optimizer both
    keep fp32 masters and AdamW's step count, so they agree with each other, follow fp32 training
    (on the same datums), and a snapshot restores."""
    reference, runs = one_rank[1], {0: one_rank[2], 2: one_rank[3]}
    ref_losses, ref_adapters = reference["losses"], reference["adapters"]
    assert isinstance(ref_losses, dict) and isinstance(ref_adapters, dict)
    for stage, got in runs.items():
        got_losses, got_adapters = got["losses"], got["adapters"]
        assert isinstance(got_losses, dict) and isinstance(got_adapters, dict)
        print(f"bf16 ZeRO-{stage}:", {k: v.tolist() for k, v in got_losses.items()})
        for name in ref_losses:
            # Tolerance: bf16 gradients flip the sign of AdamW's first updates on small elements,
            # so a step lowers the loss less than in fp32 (1.3% higher after one step here).
            np.testing.assert_allclose(got_losses[name], ref_losses[name], rtol=0.03, err_msg=name)
        for key, value in got_adapters["a"].items():
            np.testing.assert_allclose(
                got_adapters["c"][key], value, atol=1e-6, rtol=0, err_msg=f"c {key}"
            )
    zero0, zero2 = runs[0], runs[2]
    for name in zero0["losses"]:  # type: ignore[union-attr]
        # The same bf16 arithmetic; only gradient accumulation and the optimizers' code differ:
        # ZeRO-0 accumulates gradients in bf16 on the parameters, ZeRO-2 in its own buffers. bf16
        # keeps 8 significant bits (a rounding is up to 2^-9 = 0.2 % relative), so after a step
        # the losses differ by a few roundings (0.25 % measured on BF16_LENGTHS).
        np.testing.assert_allclose(
            zero0["losses"][name], zero2["losses"][name], rtol=8e-3, err_msg=name
        )  # type: ignore[index]
    for name in ("a", "c"):
        b0, b2 = _lora_b(zero0["adapters"], name), _lora_b(zero2["adapters"], name)  # type: ignore[arg-type]
        ref = _lora_b(ref_adapters, name)
        between = float(np.linalg.norm(b0 - b2) / np.linalg.norm(b2))
        to_fp32 = float(np.linalg.norm(b0 - ref) / np.linalg.norm(ref))
        print(
            f"{name}: lora_B relative difference ZeRO-0 vs ZeRO-2 (bf16) {between:.4f}, "
            f"bf16 vs fp32 {to_fp32:.4f}"
        )
        # a wrong AdamW step count (bias correction) alone scales the first update by 0.74
        assert between < 0.05, (name, between)
