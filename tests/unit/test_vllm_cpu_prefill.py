"""The SDPA path for fresh causal prefills gives what vLLM-CPU's own paged attention kernel gives
on the same batch (its kernel run here on a KV cache it filled itself), and is taken only for
batches whose every request starts from nothing."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from tinsmith.actors import vllm_cpu_prefill

cpu_attn = pytest.importorskip("vllm.v1.attention.backends.cpu_attn")
from vllm import _custom_ops as ops  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 32  # SmolLM2-135M's attention, tinsmith's CPU block


def _kernel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int]
) -> torch.Tensor:
    """vLLM-CPU's kernel over a batch of fresh prompts, as its attention backend runs it."""
    dtype = query.dtype
    blocks = [(n + BLOCK - 1) // BLOCK for n in lengths]
    kv_cache = torch.zeros(sum(blocks), KV_HEADS, BLOCK, 2 * HEAD_DIM, dtype=dtype)
    key_cache, value_cache = kv_cache.view(sum(blocks), KV_HEADS, BLOCK * 2, -1).chunk(2, dim=2)
    table = torch.zeros(len(lengths), max(blocks), dtype=torch.int32)
    slots, first = [], 0
    for i, (n, b) in enumerate(zip(lengths, blocks, strict=True)):
        table[i, :b] = torch.arange(first, first + b, dtype=torch.int32)
        slots += [(first * BLOCK) + t for t in range(n)]
        first += b
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    isa = cpu_attn._get_attn_isa(dtype, BLOCK, HEAD_DIM, "auto")
    ops.cpu_attn_reshape_and_cache(
        key, value, key_cache, value_cache, torch.tensor(slots, dtype=torch.int64), isa,
        k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto",
    )  # fmt: skip
    schedule = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=len(lengths), num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
        seq_lens=seq_lens, dtype=dtype, query_start_loc=starts, causal=True,
        sliding_window_size=-1, isa=isa, enable_kv_split=False, dynamic_causal=None,
        kv_cache_dtype="auto",
    )  # fmt: skip
    output = torch.zeros_like(query)
    ops.cpu_attention_with_kv_cache(
        query=query, key_cache=key_cache, value_cache=value_cache, output=output,
        query_start_loc=starts, seq_lens=seq_lens, scale=HEAD_DIM**-0.5, causal=True,
        alibi_slopes=None, sliding_window=-1, block_table=table, softcap=0,
        scheduler_metadata=schedule, s_aux=None, dynamic_causal=None, k_scale=1.0, v_scale=1.0,
        kv_cache_dtype="auto",
    )  # fmt: skip
    return output


@pytest.mark.parametrize("lengths", [[1], [40, 70, 5], [300]])
def test_sdpa_prefill_matches_the_kernel(lengths: list[int]) -> None:
    gen = torch.Generator().manual_seed(sum(lengths))
    tokens = sum(lengths)
    query = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen)
    key = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen)
    value = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen)
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    spans = vllm_cpu_prefill.fresh_prefill_spans(starts, torch.tensor(lengths, dtype=torch.int32))
    assert spans is not None and len(spans) == len(lengths)
    ours = torch.zeros_like(query)
    vllm_cpu_prefill.causal_sdpa(query, key, value, ours, spans, HEAD_DIM**-0.5)
    torch.testing.assert_close(ours, _kernel_attention(query, key, value, lengths))


def test_only_batches_of_fresh_prompts_take_the_sdpa_path() -> None:
    starts = torch.tensor([0, 10, 11], dtype=torch.int32)
    # request 0: 10 new tokens after 0 cached; request 1: one decode token after 30
    assert vllm_cpu_prefill.fresh_prefill_spans(starts, torch.tensor([10, 31])) is None
    # a prefix-cache hit (or a later chunk): 10 new tokens after 32 cached
    assert vllm_cpu_prefill.fresh_prefill_spans(starts[:2], torch.tensor([42])) is None
    assert vllm_cpu_prefill.fresh_prefill_spans(starts, torch.tensor([10, 1])) == [
        (0, 10),
        (10, 11),
    ]


def test_install_patches_the_cpu_backend_once() -> None:
    vllm_cpu_prefill.install()
    patched = cpu_attn.CPUAttentionBackendImpl.forward
    vllm_cpu_prefill.install()
    assert cpu_attn.CPUAttentionBackendImpl.forward is patched
    assert getattr(patched, "__tinsmith_sdpa__", False)


def test_the_plugin_is_registered_for_vllm() -> None:
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.value == "tinsmith.actors.vllm_cpu_prefill:install" for ep in plugins)
