"""The sampler worker actor: one vLLM engine replica with LoRA enabled (or, for models whose LoRA
the device's vLLM cannot run, serving adapters merged into the weights: ``merged_weights``).

Many adapters (tenants, versions) share one base model. Each adapter key gets a fresh integer
LoRA id, because vLLM caches adapters by id: reusing an id for new weights would silently serve
the old ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.actors.image_inputs import decode
from tinsmith.actors.lora_residency import LoraResidency
from tinsmith.actors.merged_weights import MergedServing, MergedWeights
from tinsmith.actors.node_info import node_info
from tinsmith.actors.prompt_scores import (
    MASK_LOGPROB,
    extras_params,
    fill_prompt_scores,
    wants_extras,
)
from tinsmith.errors import NotFoundError
from tinsmith.storage.transfer import StorageSite
from tinsmith.types.archives import safe_name
from tinsmith.types.data import ImagePlacement
from tinsmith.types.internal import AdapterBlob, AdapterSource, SampleWork, WorkerStatus
from tinsmith.types.sampling import (
    MAX_PROMPT_COLUMNS,
    SampledSequence,
    SampleResponse,
    StopReason,
    TopkLogprobs,
)
from tinsmith.types.settings import SamplerConfig

if TYPE_CHECKING:
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

log = logging.getLogger(__name__)


def configure_process(config: SamplerConfig) -> None:
    """Environment vLLM-CPU reads at engine start: KV-cache size, thread binding and where the
    model runs. Ray starts actors with OMP_NUM_THREADS=1, which would leave the engine one core;
    give it the machine's (or ``sampler.num_cpus``) unless the operator set something else."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(config.kv_cache_gib))))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # The engine core still runs in a process of its own (AsyncLLM always spawns one), but
    # with this its model runs in that process (the "uni" executor of engine_args) instead of
    # a third one: one import of torch and vLLM fewer per replica (the tests' second server
    # started in 96 s instead of 177), and no shared-memory queue between two busy-polling
    # processes on the few cores a sampler gets. vLLM-CPU allows "uni" only with this set.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    threads = int(config.num_cpus) if config.num_cpus >= 1 else (os.cpu_count() or 1)
    if os.environ.get("OMP_NUM_THREADS") in (None, "1"):
        os.environ["OMP_NUM_THREADS"] = str(threads)


def engine_args(
    model_dir: str, config: SamplerConfig, weights_dir: str | None = None
) -> dict[str, object]:
    """vLLM engine arguments of a replica (the sampling benchmark builds its baseline from them
    too); ``weights_dir``: where the weights are, if not in ``model_dir`` (merged mode)."""
    lora: dict[str, object] = {
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_lora_rank": config.max_lora_rank,
        "max_cpu_loras": config.max_cpu_loras,
    }
    return {
        "model": weights_dir or model_dir,
        "tokenizer": model_dir,
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        **(lora if config.adapters == "lora" else {}),
        "enforce_eager": config.enforce_eager,
        # Images only: no video memory profiling (its processor needs torchvision's video ops).
        "limit_mm_per_prompt": {"video": 0},
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "seed": 0,
        "disable_log_stats": True,
        # a prompt position's top-k, target ids and draws (tinsmith.actors.vllm_prompt_extras)
        "max_logprobs": MAX_PROMPT_COLUMNS,
        # Samples of one prompt (an RL group, sent at once) reuse its KV blocks, within one
        # scheduler step too; adapter versions never share blocks (their names are unique).
        "enable_prefix_caching": True,
        **({"block_size": block} if (block := kv_block_size(config)) else {}),
        **({"max_num_batched_tokens": step} if (step := step_tokens(config)) else {}),
        "distributed_executor_backend": "uni",  # one replica is one device: see configure_process
    }


def kv_block_size(config: SamplerConfig) -> int | None:
    """The configured KV-cache block size, else 32 on a CPU replica and vLLM's default on GPU."""
    if config.block_size is not None:
        return config.block_size
    return None if config.num_gpus > 0 else 32


def step_tokens(config: SamplerConfig) -> int | None:
    """The configured tokens per engine step, else on CPU max_model_len or vLLM-CPU's 4,096 if
    larger, and vLLM's default on GPU."""
    if config.max_num_batched_tokens is not None:
        return config.max_num_batched_tokens
    return None if config.num_gpus > 0 else max(config.max_model_len, 4096)


class SamplerWorker:
    """One vLLM replica; an async Ray actor so concurrent requests batch inside vLLM."""

    def __init__(
        self, replica: int, model_dir: str, config: SamplerConfig, shm_dir: str, site: StorageSite
    ) -> None:
        configure_process(config)
        self.replica = replica
        # Adapters that arrive as bytes are written here (memory-backed) for vLLM to read.
        self.blob_dir = Path(shm_dir) / f"sampler-{replica}-{os.getpid()}"
        self.model_dir = model_dir
        self.config = config
        self.site = site
        self._ids = itertools.count(1)
        self._adapters: LoraResidency[LoRARequest] = LoraResidency(config.max_cpu_loras)
        self._register_lock: asyncio.Lock | None = None  # created on the actor's event loop
        self._released: asyncio.Event | None = None  # set when a request releases an adapter
        self._engine: object | None = None
        self.merged = (
            MergedServing(MergedWeights(model_dir, self.blob_dir / "merged"))
            if config.adapters == "merged"
            else None
        )

    async def start(self) -> int:
        """Start the engine (seconds); separate from __init__ so the caller can await it."""
        weights = None
        if self.merged is not None:
            weights = await asyncio.to_thread(self.merged.weights.base_dir)
        await self._start_engine(weights)
        return self.replica

    async def _start_engine(self, weights: str | None) -> None:
        """(Re)start the engine, on ``weights`` if given (merged mode), else the model's."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self._engine is not None:
            self._engine.shutdown()  # type: ignore[attr-defined]
            self._engine = None
        args = AsyncEngineArgs(**engine_args(self.model_dir, self.config, weights))  # type: ignore[arg-type]
        self._engine = AsyncLLM.from_engine_args(args)

    def _llm(self) -> object:
        if self._engine is None:
            raise RuntimeError("sampler engine not started")
        return self._engine

    async def load_adapter(self, key: str, source: AdapterSource) -> None:
        """Make ``key`` servable from its peft files (idempotent per key); archives are fetched
        from storage into this node's cache first."""
        from vllm.lora.request import LoRARequest

        from tinsmith.storage.transfer import fetch_dir

        if key in self._adapters or (self.merged is not None and key in self.merged.adapters):
            return
        if source.blob is not None:
            path = str(
                await asyncio.to_thread(_write_blob, source.blob, self.blob_dir / safe_name(key))
            )
        elif source.archive is not None:
            path = str(await asyncio.to_thread(fetch_dir, self.site, source.archive))
        elif source.path is not None:
            path = source.path
        else:
            raise ValueError("adapter source names neither a path nor an archive")
        if self.merged is not None:
            self.merged.adapters[key] = path
            return
        request = LoRARequest(lora_name=key, lora_int_id=next(self._ids), lora_path=path)
        await self._register(key, request)

    async def _register(self, key: str, request: LoRARequest) -> None:
        """Register with vLLM, first parking idle adapters so that vLLM never
        evicts one (lora_residency.py)."""
        if self._register_lock is None:
            self._register_lock = asyncio.Lock()
            self._released = asyncio.Event()
        async with self._register_lock:
            if key in self._adapters.resident:
                return
            while (
                not self._adapters.has_room()
            ):  # every resident adapter is in use: wait for one to finish
                assert self._released is not None
                self._released.clear()
                await self._released.wait()
            for old in self._adapters.to_evict():
                await self._llm().remove_lora(self._adapters.park(old).lora_int_id)  # type: ignore[attr-defined]
            await self._llm().add_lora(request)  # type: ignore[attr-defined]
            self._adapters.add(key, request)

    async def _use_adapter(self, key: str) -> LoRARequest:
        """The adapter's request, registered again if it was parked;
        counted in flight until released."""
        lora = self._adapters.use(key)
        if lora is None:
            parked = self._adapters.parked.get(key)
            if parked is None:
                raise NotFoundError(f"adapter {key!r} is not loaded on sampler {self.replica}")
            await self._register(key, parked)
            lora = self._adapters.use(key)
            if (
                lora is None
            ):  # parked again by a concurrent registration before this request could start
                raise NotFoundError(
                    f"adapter {key!r} could not be made resident on sampler {self.replica}"
                )
        return lora

    def node_id(self) -> str:
        return node_info()[0]

    def status(self) -> WorkerStatus:
        import psutil

        proc = psutil.Process()
        rss = proc.memory_info().rss + sum(
            c.memory_info().rss for c in proc.children(recursive=True)
        )
        node_id, node_resources = node_info()
        return WorkerStatus(
            kind="sampler",
            index=self.replica,
            pid=os.getpid(),
            rss_bytes=rss,
            adapters=len(self._adapters) if self.merged is None else len(self.merged.adapters),
            node_id=node_id,
            node_resources=node_resources,
        )

    async def sample(self, work: SampleWork) -> SampleResponse:
        if self.merged is not None:
            async with self.merged.serving(work.adapter_key, self._start_engine):
                return await self._generate(work, None)
        lora = None if work.adapter_key is None else await self._use_adapter(work.adapter_key)
        try:
            return await self._generate(work, lora)
        finally:
            if work.adapter_key is not None:
                self._adapters.done(work.adapter_key)
                if self._released is not None:
                    self._released.set()

    async def _generate(self, work: SampleWork, lora: LoRARequest | None) -> SampleResponse:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        extras = wants_extras(work)
        want_prompt = work.prompt_logprobs or work.topk_prompt_logprobs > 0 or extras
        # vLLM refuses n > 1 when greedy; greedy samples are identical, so run one and copy it.
        greedy = work.temperature == 0.0
        prompt_side: dict[str, object] = {
            "prompt_logprobs": max(0, work.topk_prompt_logprobs) if want_prompt else None,
            **(extras_params(work) if extras else {}),
        }
        params = VllmSamplingParams(
            n=1 if greedy else work.num_samples,
            max_tokens=work.max_tokens,
            temperature=work.temperature,
            top_k=work.top_k if work.top_k > 0 else 0,
            top_p=work.top_p,
            seed=work.seed,
            stop=work.stop_strings or None,
            stop_token_ids=work.stop_token_ids or None,
            logprobs=max(0, work.topk_sample_logprobs),
            # One output holding all n completions (streamed outputs carry one child each).
            output_kind=RequestOutputKind.FINAL_ONLY,
            **prompt_side,  # type: ignore[arg-type]
        )
        final = None
        prompt = TokensPrompt(prompt_token_ids=work.prompt_tokens)
        if work.images:
            prompt = vllm_image_prompt(work.prompt_tokens, work.images)
        gen = self._llm().generate(prompt, params, request_id=uuid.uuid4().hex, lora_request=lora)  # type: ignore[attr-defined]
        async for output in gen:
            final = output
        assert final is not None
        sequences = [self._sequence(out, work.topk_sample_logprobs) for out in final.outputs]
        if greedy:
            sequences = [sequences[0].model_copy() for _ in range(work.num_samples)]
        resp = SampleResponse(
            sequences=sequences, prompt_cache_hit_tokens=final.num_cached_tokens or 0
        )
        if extras and final.prompt_logprobs is not None:
            fill_prompt_scores(resp, work, final.prompt_logprobs)
        elif want_prompt and final.prompt_logprobs is not None:
            prompt_lps: list[float | None] = [None]
            prompt_lps += [
                _logprob_of(entry, tok)
                for entry, tok in zip(
                    final.prompt_logprobs[1:], work.prompt_tokens[1:], strict=True
                )
            ]
            # prompt_logprobs_last_n: only the last N positions are reported (all are scored)
            cutoff = len(prompt_lps) - (work.prompt_logprobs_last_n or len(prompt_lps))
            unreported: list[None] = [None] * cutoff
            resp.prompt_logprobs = [*unreported, *prompt_lps[cutoff:]]
            if work.topk_prompt_logprobs > 0:
                entries = [*unreported, *final.prompt_logprobs[cutoff:]]
                resp.topk_prompt_logprobs = _topk(entries, work.topk_prompt_logprobs)
        return resp

    @staticmethod
    def _sequence(out: object, topk: int) -> SampledSequence:
        tokens = list(out.token_ids)  # type: ignore[attr-defined]
        raw = out.logprobs  # type: ignore[attr-defined]
        logprobs = (
            [_logprob_of(entry, tok) for entry, tok in zip(raw, tokens, strict=True)]
            if raw
            else None
        )
        reason: StopReason = "stop" if out.finish_reason == "stop" else "length"  # type: ignore[attr-defined]
        return SampledSequence(
            stop_reason=reason,
            tokens=tokens,
            logprobs=[float(x) if x is not None else 0.0 for x in logprobs] if logprobs else None,
            topk_logprobs=_topk(raw, topk) if (raw and topk > 0) else None,
        )


def vllm_image_prompt(tokens: list[int], images: list[ImagePlacement]) -> TokensPrompt:
    """A prompt with images as vLLM takes it: one placeholder token per image (vLLM's processor
    expands it to the image's tokens again) and the decoded images."""
    from vllm.inputs import TokensPrompt

    ids: list[int] = []
    start = 0
    for image in images:
        ids += tokens[start : image.offset + 1]
        start = image.offset + image.tokens
    ids += tokens[start:]
    return TokensPrompt(prompt_token_ids=ids, multi_modal_data={"image": decode(images)})


def _write_blob(blob: AdapterBlob, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in blob.files.items():
        (directory / name).write_bytes(data)
    return directory


def _logprob_of(entry: dict[int, object] | None, token: int) -> float | None:
    if entry is None or token not in entry:
        return None
    return float(entry[token].logprob)  # type: ignore[attr-defined]


def _topk(entries: list[dict[int, object] | None], k: int) -> TopkLogprobs:
    ids: list[list[int]] = []
    lps: list[list[float]] = []
    for entry in entries:
        ranked = sorted((entry or {}).items(), key=lambda kv: -float(kv[1].logprob))[:k]  # type: ignore[attr-defined]
        row_ids = [int(t) for t, _ in ranked] + [0] * (k - len(ranked))
        row_lps = [float(lp.logprob) for _, lp in ranked] + [MASK_LOGPROB] * (k - len(ranked))  # type: ignore[attr-defined]
        ids.append(row_ids)
        lps.append(row_lps)
    return TopkLogprobs(token_ids=ids, logprobs=lps)
