"""Prompt extras vLLM does not compute, installed as a vLLM general plugin: the logprobs of given
token ids at each prompt position (``target_prompt_logprobs``) and independent draws from the
model's next-token distribution at each position (``prompt_alt_tokens_k``).

vLLM scores a prompt position over the whole vocabulary, then keeps the prompt's own token and
the top-k (``Sampler.gather_logprobs``). For a request that carries ``extra_args[EXTRA_KEY]``,
that step also appends one column per target id and one per draw after the top-k, so the values
travel back through vLLM's own prompt-logprobs path; the request asks for ``flat_logprobs``,
which keeps every column even when ids repeat. Only requests that ask are touched: vLLM scores
prompts one request at a time anyway, and the patched step does the same, with the request's
extras current (chunked prefills included: each chunk gets its own rows).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # torch is imported where it is used: the API server imports EXTRA_KEY
    import torch
    from vllm.v1.outputs import LogprobsTensors

log = logging.getLogger(__name__)

EXTRA_KEY = "tinsmith_prompt_extras"
DRAW_ROWS = 1024  # rows of the vocabulary-wide softmax at once (8k rows x 49k ids: 1.6 GB)


class PromptExtras(TypedDict):
    """What a request asks for, in ``SamplingParams.extra_args[EXTRA_KEY]``."""

    topk: int  # top-k columns first, as without extras
    targets: list[list[int]]  # [len(prompt) - 1][K] token ids; -1 asks nothing
    alt: int  # draws per position
    temperature: float
    seed: int | None


_CURRENT: contextvars.ContextVar[tuple[PromptExtras, int] | None] = contextvars.ContextVar(
    "tinsmith_prompt_extras", default=None
)


def extra_columns(
    logprobs: torch.Tensor, extras: PromptExtras, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target and draw columns, ``(ids, logprobs)`` each ``[N, K + alt]``, of prompt rows
    ``start .. start + N - 1`` (row i scores prompt position i + 1) from their ``[N, vocab]``
    logprobs. A -1 target gets id 0 and logprob 0.0."""
    import torch

    n = logprobs.shape[0]
    ids: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    if extras["targets"]:
        targets = torch.tensor(
            extras["targets"][start : start + n], dtype=torch.int64, device=logprobs.device
        )
        asked = targets >= 0
        picked = targets.clamp(min=0)
        ids.append(picked)
        values.append(logprobs.gather(-1, picked).masked_fill(~asked, 0.0))
    if extras["alt"]:
        draws = _draws(logprobs, extras, start)
        ids.append(draws)
        values.append(logprobs.gather(-1, draws))
    if not ids:
        empty = torch.zeros((n, 0), dtype=torch.int64, device=logprobs.device)
        return empty, empty.to(logprobs.dtype)
    return torch.cat(ids, dim=1), torch.cat(values, dim=1)


def _draws(logprobs: torch.Tensor, extras: PromptExtras, start: int) -> torch.Tensor:
    """``alt`` draws per row, with replacement, at the request's temperature (its argmax at
    temperature 0), seeded by the request's seed and the rows' place when it has one."""
    import torch

    k, temperature = extras["alt"], extras["temperature"]
    if temperature == 0.0:
        return logprobs.argmax(dim=-1, keepdim=True).expand(-1, k).contiguous()
    generator = None
    if extras["seed"] is not None:
        generator = torch.Generator(device=logprobs.device)
        generator.manual_seed((extras["seed"] * 1_000_003 + start) % (2**63))
    out = []
    for first in range(0, logprobs.shape[0], DRAW_ROWS):
        rows = logprobs[first : first + DRAW_ROWS].float() / temperature
        probs = torch.softmax(rows, dim=-1)
        out.append(torch.multinomial(probs, k, replacement=True, generator=generator))
    return torch.cat(out, dim=0)


def _request_extras(request: object) -> PromptExtras | None:
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    found = extra.get(EXTRA_KEY)
    return found if isinstance(found, dict) else None  # type: ignore[return-value]


def _patched_gather(original: Callable[..., LogprobsTensors]) -> Callable[..., LogprobsTensors]:
    def gather(
        logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor
    ) -> LogprobsTensors:
        current = _CURRENT.get()
        if current is None:
            return original(logprobs, num_logprobs, token_ids)
        import torch

        extras, start = current
        base = original(logprobs, extras["topk"], token_ids)
        ids, values = extra_columns(logprobs, extras, start)
        return type(base)(
            torch.cat((base.logprob_token_ids, ids.to(base.logprob_token_ids.dtype)), dim=1),
            torch.cat((base.logprobs, values.to(base.logprobs.dtype)), dim=1),
            base.selected_token_ranks,
        )

    gather.__tinsmith_extras__ = True  # type: ignore[attr-defined]
    return gather


def _patched_prompt_logprobs(
    original: Callable[..., dict[str, Any]],
) -> Callable[..., dict[str, Any]]:
    def prompt_logprobs(
        self: object, hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int]
    ) -> dict[str, Any]:
        wanted: dict[str, int] = self.num_prompt_logprobs  # type: ignore[attr-defined]
        requests = self.requests  # type: ignore[attr-defined]
        if not any(_request_extras(requests.get(r)) for r in wanted):
            return original(self, hidden_states, num_scheduled_tokens)
        out: dict[str, Any] = {}  # vLLM's LogprobsTensors (or None) per request
        for req_id in list(wanted):
            request = requests.get(req_id)
            extras = _request_extras(request)
            start = int(getattr(request, "num_computed_tokens", 0))
            single = {req_id: wanted[req_id]}
            self.num_prompt_logprobs = single  # type: ignore[attr-defined]
            token = _CURRENT.set((extras, start) if extras is not None else None)
            try:
                out.update(original(self, hidden_states, num_scheduled_tokens))
            finally:
                _CURRENT.reset(token)
                self.num_prompt_logprobs = wanted  # type: ignore[attr-defined]
            if req_id not in single:  # its prompt is done: vLLM forgot it in ``single``
                del wanted[req_id]
        return out

    prompt_logprobs.__tinsmith_extras__ = True  # type: ignore[attr-defined]
    return prompt_logprobs


def install() -> None:
    """Patch vLLM's prompt-logprobs step (idempotent, per process)."""
    try:
        from vllm.v1.sample.sampler import Sampler
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError as exc:  # a vLLM without the V1 model runner: nothing to patch
        log.debug("tinsmith: vLLM prompt extras not installed (%s)", exc)
        return
    runner_step = GPUModelRunner._get_prompt_logprobs_dict
    if getattr(runner_step, "__tinsmith_extras__", False):
        return
    GPUModelRunner._get_prompt_logprobs_dict = _patched_prompt_logprobs(runner_step)  # type: ignore[method-assign]
    Sampler.gather_logprobs = staticmethod(_patched_gather(Sampler.gather_logprobs))  # type: ignore[method-assign]
