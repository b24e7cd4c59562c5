"""Causal prefill through PyTorch's SDPA on vLLM's CPU backend, installed as a vLLM general plugin.

vLLM-CPU runs every attention through its paged kernel (``cpu_attention_with_kv_cache``). On a CPU
without AVX-512 that kernel took about 2.4x as long as PyTorch's flash attention on a long
prefill: two thirds of the 80 s an 8,191-token prompt's logprobs took went there. A batch whose
requests all start from nothing (no prefix-cache hit, no earlier chunk of the prompt) attends
only to its own new tokens, causally, which is what SDPA's ``is_causal`` computes; such a batch
goes to SDPA, one request at a time. Everything else (decode steps, later chunks, prefix-cache
hits, sliding windows, ALiBi, soft caps, sinks, fp8 caches, encoders) stays on vLLM's kernel.
vLLM writes the new tokens' keys and values into its cache before ``forward`` either way, so
later steps read the same cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, CPUAttentionMetadata

log = logging.getLogger(__name__)

Span = tuple[int, int]


def fresh_prefill_spans(query_start_loc: torch.Tensor, seq_lens: torch.Tensor) -> list[Span] | None:
    """Each request's ``(start, end)`` rows in the batch when every request's query is its whole
    sequence so far (nothing before it in the cache); None otherwise."""
    starts = query_start_loc.tolist()
    spans = []
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[i], starts[i + 1]
        if end - start != seq_len:
            return None
        spans.append((start, end))
    return spans


def causal_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    output: torch.Tensor,
    spans: list[Span],
    scale: float,
) -> None:
    """Write each span's causal self-attention into ``output``. ``query`` is ``(tokens, heads,
    head_dim)``, ``key``/``value`` ``(tokens, kv_heads, head_dim)`` (grouped-query heads are
    shared as vLLM shares them: query head h reads kv head h // (heads / kv_heads))."""
    heads, head_dim = query.shape[1], query.shape[2]
    out = output.view(output.shape[0], heads, head_dim)
    grouped = key.shape[1] != heads
    for start, end in spans:
        q = query[start:end].transpose(0, 1).unsqueeze(0)
        k = key[start:end].transpose(0, 1).unsqueeze(0)
        v = value[start:end].transpose(0, 1).unsqueeze(0)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=grouped
        )
        out[start:end] = attended.squeeze(0).transpose(0, 1)


def _sdpa_applies(impl: CPUAttentionBackendImpl, meta: CPUAttentionMetadata, decoder: str) -> bool:
    """Whether this layer and batch compute plain causal attention over their own tokens
    (``decoder``: vLLM's name of a decoder layer's attention type)."""
    return (
        impl.attn_type == decoder
        and impl.alibi_slopes is None
        and impl.sliding_window == -1
        and not impl.logits_soft_cap
        and impl.sinks is None
        and not impl.is_fp8_kv_cache
        and meta.causal
        and meta.dynamic_causal is None
    )


def _patched(original: Callable[..., torch.Tensor], decoder: str) -> Callable[..., torch.Tensor]:
    def forward(
        self: CPUAttentionBackendImpl,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: CPUAttentionMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (
            attn_metadata is not None
            and output_scale is None
            and output_block_scale is None
            and _sdpa_applies(self, attn_metadata, decoder)
        ):
            spans = fresh_prefill_spans(attn_metadata.query_start_loc, attn_metadata.seq_lens)
            if spans is not None:
                n = attn_metadata.num_actual_tokens
                causal_sdpa(
                    query[:n].view(n, self.num_heads, self.head_size),
                    key[:n].view(n, self.num_kv_heads, self.head_size),
                    value[:n].view(n, self.num_kv_heads, self.head_size),
                    output[:n],
                    spans,
                    self.scale,
                )
                return output
        return original(
            self, layer, query, key, value, kv_cache, attn_metadata, output,
            output_scale, output_block_scale,
        )  # fmt: skip

    forward.__tinsmith_sdpa__ = True  # type: ignore[attr-defined]
    return forward


def install() -> None:
    """Route fresh causal prefills of vLLM-CPU's attention to SDPA (idempotent, per process)."""
    try:
        from vllm.v1.attention.backend import AttentionType
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
    except ImportError as exc:  # a vLLM without the CPU backend: nothing to patch
        log.debug("tinsmith: vLLM CPU attention not patched (%s)", exc)
        return
    current = CPUAttentionBackendImpl.forward
    if getattr(current, "__tinsmith_sdpa__", False):
        return
    CPUAttentionBackendImpl.forward = _patched(current, AttentionType.DECODER)  # type: ignore[method-assign]
