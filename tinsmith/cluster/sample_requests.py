"""Sample requests as the server checks them: which sampler a request names (a session, a
checkpoint, a base model; the caller's own or published), and its prompt and parameters
checked against the model's limits, each error naming the field. The sampling routes and the
console's playground both go through here.
"""

from __future__ import annotations

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.checkpoints import parse_tinker_path
from tinsmith.cluster.registry import SamplerSession
from tinsmith.cluster.state import ServedModel, ServerState
from tinsmith.errors import UserInputError
from tinsmith.types.data import ImagePlacement, ModelInput, TensorData
from tinsmith.types.internal import AdapterSource, SampleWork
from tinsmith.types.requests import SampleRequest
from tinsmith.types.sampling import MAX_ALT_TOKENS, MAX_TARGET_IDS, MAX_TOPK_LOGPROBS

MAX_NUM_SAMPLES = 128  # per request; more rollouts go in more requests


def sampler_for(state: ServerState, body: SampleRequest) -> SamplerSession:
    """The sampler a request names: its sampling session, a checkpoint, or a base model."""
    if body.sampling_session_id is not None:
        return state.clients.sampler(body.sampling_session_id)
    if body.model_path is not None:
        return checkpoint_sampler(state, body.model_path, "")
    if body.base_model is not None:
        state.served(body.base_model)
        return SamplerSession("", body.base_model, None, None, None, current_tenant())
    raise UserInputError("asample needs sampling_session_id, model_path or base_model")


def checkpoint_sampler(state: ServerState, model_path: str, sampler_id: str) -> SamplerSession:
    """Sampling from a stored checkpoint (sampler_weights, or the adapter inside weights).

    The adapter key includes the archive's hash, so an overwritten checkpoint is a new adapter
    to vLLM rather than a stale cached one.
    """
    parsed = parse_tinker_path(model_path, "model_path")
    if parsed.checkpoint_type == "external":
        raise UserInputError(
            f"model_path {model_path!r}: sample from sampler_weights or weights checkpoints"
        )
    record = state.readable_checkpoint(model_path, field="model_path")
    source = AdapterSource(archive=state.checkpoints.ref_of(record))
    key = f"{model_path}@{record.sha256[:12]}"
    return SamplerSession(sampler_id, record.base_model, model_path, key, source, current_tenant())


def sample_work(
    body: SampleRequest, prompt: ModelInput, session: SamplerSession, served: ServedModel
) -> SampleWork:
    """Validate a sample request (its ``prompt`` with images read) against the model's limits;
    errors name the field."""
    max_context = served.max_context_length
    tokens, images = _prompt_tokens(prompt, max_context, served.vocab_size, served.image_token_id)
    _check_sampling(body)
    params = body.sampling_params
    room = max_context - len(tokens)
    stop_strings, stop_ids = _stop_lists(params.stop)
    return SampleWork(
        prompt_tokens=tokens,
        num_samples=body.num_samples,
        max_tokens=min(params.max_tokens or room, room),
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop_strings=stop_strings,
        stop_token_ids=stop_ids,
        prompt_logprobs=bool(body.prompt_logprobs),
        topk_prompt_logprobs=body.topk_prompt_logprobs,
        topk_sample_logprobs=body.topk_sample_logprobs,
        prompt_logprobs_last_n=_last_n(body, len(tokens)),
        target_token_ids=_targets(body.target_prompt_logprobs, len(tokens), served.vocab_size),
        prompt_alt_tokens_k=body.prompt_alt_tokens_k,
        adapter_key=session.adapter_key,
        images=images,
    )


def _prompt_tokens(
    prompt: ModelInput, max_context: int, vocab_size: int, image_token_id: int | None
) -> tuple[list[int], list[ImagePlacement]]:
    """The prompt's token ids (an image's as placeholders) and images: not empty, inside the
    vocabulary, shorter than the context."""
    try:
        tokens, images = prompt.to_tokens(image_token_id)
    except ValueError as exc:
        raise UserInputError(f"prompt: {exc}") from exc
    if not tokens:
        raise UserInputError("prompt is empty")
    if len(tokens) >= max_context:  # before any per-token work on a huge prompt
        raise UserInputError(
            f"prompt has {len(tokens)} tokens; the model's context is {max_context}"
        )
    if not 0 <= min(tokens) <= max(tokens) < vocab_size:
        pos, tok = next((i, t) for i, t in enumerate(tokens) if not 0 <= t < vocab_size)
        raise UserInputError(
            f"prompt token [{pos}] = {tok} is outside the vocabulary (0..{vocab_size - 1})"
        )
    return tokens, images


def _check_sampling(body: SampleRequest) -> None:
    """Counts and sampling parameters in range; features this server lacks refused."""
    params = body.sampling_params
    if not 1 <= body.num_samples <= MAX_NUM_SAMPLES:
        raise UserInputError(f"num_samples must be in 1..{MAX_NUM_SAMPLES}, got {body.num_samples}")
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs"):
        k = getattr(body, name)
        if not 0 <= k <= MAX_TOPK_LOGPROBS:
            raise UserInputError(f"{name} must be in 0..{MAX_TOPK_LOGPROBS}, got {k}")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise UserInputError(f"sampling_params.max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise UserInputError(f"sampling_params.temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise UserInputError(f"sampling_params.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k == 0 or params.top_k < -1:
        raise UserInputError(f"sampling_params.top_k must be -1 (off) or >= 1, got {params.top_k}")
    if not 0 <= body.prompt_alt_tokens_k <= MAX_ALT_TOKENS:
        raise UserInputError(
            f"prompt_alt_tokens_k must be in 0..{MAX_ALT_TOKENS}, got {body.prompt_alt_tokens_k}"
        )


def _last_n(body: SampleRequest, prompt_length: int) -> int | None:
    """``prompt_logprobs_last_n``: with prompt logprobs, in 1..len(prompt) - 1."""
    n = body.prompt_logprobs_last_n
    if n is None:
        return None
    if not body.prompt_logprobs:
        raise UserInputError("prompt_logprobs_last_n needs prompt_logprobs")
    if not 1 <= n <= prompt_length - 1:
        raise UserInputError(
            f"prompt_logprobs_last_n must be in 1..{prompt_length - 1} (the prompt's length - 1), "
            f"got {n}"
        )
    return n


def _stop_lists(stop: str | list[str] | list[int] | None) -> tuple[list[str], list[int]]:
    """The SDK's ``stop`` (a string, strings, or token ids) as (stop strings, stop token ids)."""
    if isinstance(stop, str):
        return [stop], []
    if not stop:
        return [], []
    if all(isinstance(s, str) for s in stop):
        return [str(s) for s in stop], []
    return [], [int(s) for s in stop]


def _targets(
    tensor: TensorData | None, prompt_length: int, vocab_size: int
) -> list[list[int]] | None:
    """``target_prompt_logprobs`` as ``[len(prompt) - 1][K]`` ids (dense or sparse CSR, whose
    unlisted cells are -1): int64, K in 1..MAX_TARGET_IDS, each id -1 or in the vocabulary."""
    if tensor is None:
        return None
    field = "target_prompt_logprobs"
    rows = prompt_length - 1
    shape = tensor.shape or []
    if tensor.dtype != "int64" or len(shape) != 2 or shape[0] != rows:
        raise UserInputError(
            f"{field} must be an int64 tensor of shape [len(prompt) - 1, K] = [{rows}, K], got "
            f"{tensor.dtype} {shape}"
        )
    k = shape[1]
    if not 1 <= k <= MAX_TARGET_IDS:
        raise UserInputError(f"{field}: K must be in 1..{MAX_TARGET_IDS}, got {k}")
    ids = [int(v) for v in tensor.data]
    if tensor.sparse_crow_indices is not None or tensor.sparse_col_indices is not None:
        ids = _densify(tensor, rows, k, field)
    elif len(ids) != rows * k:
        raise UserInputError(f"{field} has {len(ids)} values for shape [{rows}, {k}]")
    bad = next((i for i, v in enumerate(ids) if not -1 <= v < vocab_size), None)
    if bad is not None:
        raise UserInputError(
            f"{field}[{bad // k}, {bad % k}] = {ids[bad]} is neither -1 nor in the vocabulary "
            f"(0..{vocab_size - 1})"
        )
    return [ids[r * k : (r + 1) * k] for r in range(rows)]


def _densify(tensor: TensorData, rows: int, k: int, field: str) -> list[int]:
    """A CSR tensor's cells, unlisted ones -1."""
    crow, cols = tensor.sparse_crow_indices or [], tensor.sparse_col_indices or []
    values = [int(v) for v in tensor.data]
    if len(crow) != rows + 1 or len(cols) != len(values) or crow[0] != 0 or crow[-1] != len(values):
        raise UserInputError(f"{field}: sparse CSR indices do not match shape [{rows}, {k}]")
    dense = [-1] * (rows * k)
    for r in range(rows):
        if not 0 <= crow[r] <= crow[r + 1] <= len(values):
            raise UserInputError(f"{field}: sparse CSR row pointers must not decrease")
        for i in range(crow[r], crow[r + 1]):
            if not 0 <= cols[i] < k:
                raise UserInputError(f"{field}: sparse column {cols[i]} is outside 0..{k - 1}")
            dense[r * k + cols[i]] = values[i]
    return dense
