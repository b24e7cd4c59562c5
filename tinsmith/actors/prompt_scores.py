"""A sample request's prompt extras on a replica: the vLLM parameters that ask for them
(``tinsmith.actors.vllm_prompt_extras`` computes them inside vLLM) and the response fields read
back from vLLM's flat prompt logprobs. Each scored position's columns are, in order: the prompt's
own token, the top-k, the target ids, the draws."""

from __future__ import annotations

from tinsmith.actors.vllm_prompt_extras import EXTRA_KEY, PromptExtras
from tinsmith.types.data import TensorData
from tinsmith.types.internal import SampleWork
from tinsmith.types.sampling import PromptAltTokens, SampleResponse, TopkLogprobs

MASK_LOGPROB = -99999.0  # the SDK's padding of a top-k row; a row of it alone reads as None


def wants_extras(work: SampleWork) -> bool:
    """Whether the request asks for anything only the plugin computes."""
    return work.target_token_ids is not None or work.prompt_alt_tokens_k > 0


def extras_params(work: SampleWork) -> dict[str, object]:
    """``SamplingParams`` fields that ask vLLM for the request's prompt extras."""
    k = len(work.target_token_ids[0]) if work.target_token_ids else 0
    extras: PromptExtras = {
        "topk": work.topk_prompt_logprobs,
        "targets": work.target_token_ids or [],
        "alt": work.prompt_alt_tokens_k,
        "temperature": work.temperature,
        "seed": work.seed,
    }
    return {
        "prompt_logprobs": work.topk_prompt_logprobs + k + work.prompt_alt_tokens_k,
        "flat_logprobs": True,
        "extra_args": {EXTRA_KEY: extras},
    }


def fill_prompt_scores(resp: SampleResponse, work: SampleWork, flat: object) -> None:
    """The response's prompt fields from vLLM's ``FlatLogprobs`` (position 0 is unscored)."""
    starts: list[int] = flat.start_indices  # type: ignore[attr-defined]
    ends: list[int] = flat.end_indices  # type: ignore[attr-defined]
    ids: list[int] = flat.token_ids  # type: ignore[attr-defined]
    values: list[float] = flat.logprobs  # type: ignore[attr-defined]
    t, k_alt = work.topk_prompt_logprobs, work.prompt_alt_tokens_k
    k_target = len(work.target_token_ids[0]) if work.target_token_ids else 0
    rows = [(ids[s:e], values[s:e]) for s, e in zip(starts[1:], ends[1:], strict=True)]
    cutoff = len(rows) + 1 - (work.prompt_logprobs_last_n or len(rows) + 1)
    if work.prompt_logprobs:
        scored: list[float | None] = [None] + [float(v[0]) for _, v in rows]
        unscored: list[float | None] = [None] * cutoff
        resp.prompt_logprobs = unscored + scored[cutoff:]
    if t > 0:
        top_ids = [[0] * t] + [list(r[1 : 1 + t]) for r, _ in rows]
        top_lps = [[MASK_LOGPROB] * t] + [list(v[1 : 1 + t]) for _, v in rows]
        for i in range(cutoff):
            top_ids[i], top_lps[i] = [0] * t, [MASK_LOGPROB] * t
        resp.topk_prompt_logprobs = TopkLogprobs(token_ids=top_ids, logprobs=top_lps)
    if k_target:
        first = 1 + t
        cells = [float(x) for _, v in rows for x in v[first : first + k_target]]
        resp.target_prompt_logprobs = TensorData(
            data=cells, dtype="float32", shape=[len(rows), k_target]
        )
    if k_alt:
        first = 1 + t + k_target
        resp.prompt_alt_tokens = PromptAltTokens(
            tokens=TensorData(
                data=[int(x) for r, _ in rows for x in r[first : first + k_alt]],
                dtype="int64",
                shape=[len(rows), k_alt],
            ),
            logprobs=TensorData(
                data=[float(x) for _, v in rows for x in v[first : first + k_alt]],
                dtype="float32",
                shape=[len(rows), k_alt],
            ),
        )
