"""The console's playground: sample from a checkpoint or a base model with editable sampling
parameters, and see each token with its logprob.

The request goes through the same checks as ``asample`` (``tinsmith.cluster.sample_requests``:
the caller's own or a published checkpoint, the prompt inside the context and vocabulary) and
runs on the model's coordinator like any sample. The prompt is text, tokenized here with the
model's own tokenizer (optionally as one user message of its chat template).
"""

from __future__ import annotations

import asyncio
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from tinsmith.cluster.console.html import PREFIX, esc
from tinsmith.cluster.console.routing import console_router, form_fields, html
from tinsmith.cluster.sample_requests import sample_work, sampler_for
from tinsmith.cluster.state import ServerState, State
from tinsmith.errors import UserInputError
from tinsmith.types.data import ModelInput
from tinsmith.types.requests import SampleRequest
from tinsmith.types.sampling import SampleResponse, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

router = console_router()


class PlaygroundForm(BaseModel):
    """What the playground's form holds, with the ranges it accepts."""

    checkpoint: str = Field(default="", max_length=1024)
    base_model: str = Field(default="", max_length=256)
    prompt: str = Field(default="", max_length=200_000)
    chat: bool = True
    max_tokens: int = Field(default=32, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0, le=10, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(default=-1, ge=-1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    num_samples: int = Field(default=1, ge=1, le=4)


@functools.lru_cache(maxsize=8)
def _tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    if chat and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        prompt = str(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
    return [int(t) for t in tokenizer.encode(prompt, add_special_tokens=False)]


@router.get("/playground")
async def playground(
    state: State, checkpoint: str = "", base_model: str = "", mode: str = ""
) -> HTMLResponse:
    """``?mode=checkpoint&checkpoint=<tinker path>`` (the SDK's playground link) or
    ``?base_model=<name>`` pre-fills the form."""
    form = PlaygroundForm(checkpoint=checkpoint[:1024], base_model=base_model[:256])
    return html("Playground", _form(state, form))


@router.post("/playground")
async def run_playground(request: Request, state: State) -> HTMLResponse:
    """Sample with the form's settings; a refused request shows why above the form."""
    fields = await form_fields(request)
    fields["chat"] = "true" if fields.get("chat") else "false"
    try:
        form = PlaygroundForm.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserInputError(problems) from exc
    try:
        out, tokenizer = await _sample(state, form)
    except UserInputError as exc:
        body = f'<p class="error">{esc(exc)}</p>' + _form(state, form)
        return html("Playground", body, 400)
    return html("Playground", _form(state, form) + _results(out, tokenizer))


async def _sample(
    state: ServerState, form: PlaygroundForm
) -> tuple[SampleResponse, PreTrainedTokenizerBase]:
    if not form.prompt:
        raise UserInputError("prompt is empty")
    params = SamplingParams(
        max_tokens=form.max_tokens,
        temperature=form.temperature,
        top_p=form.top_p,
        top_k=form.top_k,
        seed=form.seed,
    )
    placeholder = ModelInput.from_ints([0])
    body = SampleRequest(
        prompt=placeholder,
        sampling_params=params,
        num_samples=form.num_samples,
        model_path=form.checkpoint or None,
        base_model=None if form.checkpoint else (form.base_model or next(iter(state.models))),
    )
    session = sampler_for(state, body)
    served = state.served(session.base_model)
    if not served.sampleable:
        raise UserInputError(f"{served.name} has no sampler replicas on this server")
    tokenizer = await asyncio.to_thread(_tokenizer, served.model_dir)
    tokens = await asyncio.to_thread(_encode, tokenizer, form.prompt, form.chat)
    prompt = ModelInput.from_ints(tokens)
    work = sample_work(body.model_copy(update={"prompt": prompt}), prompt, session, served)
    return await served.coordinator.sample(work, session.source), tokenizer


def _form(state: ServerState, form: PlaygroundForm) -> str:
    models = [m for m in state.models.values() if m.sampleable]
    options = "".join(
        f'<option value="{esc(m.name)}"{" selected" if m.name == form.base_model else ""}>'
        f"{esc(m.name)}</option>"
        for m in models
    )

    def number(name: str, value: object, step: str = "any") -> str:
        shown = "" if value is None else esc(value)
        return (
            f'<label>{name} <input type="number" name="{name}" value="{shown}" '
            f'step="{step}"></label>'
        )

    return (
        f'<form method="post" action="{PREFIX}/playground">'
        '<p><label>checkpoint <input name="checkpoint" size="70" '
        f'placeholder="tinker://…" value="{esc(form.checkpoint)}"></label> '
        f'<label>or base model <select name="base_model">{options}</select></label></p>'
        f'<textarea name="prompt" rows="6" placeholder="Prompt">{esc(form.prompt)}</textarea>'
        f'<p><label><input type="checkbox" name="chat" value="1"'
        f"{' checked' if form.chat else ''}> as a chat message</label>"
        + number("max_tokens", form.max_tokens, "1")
        + number("temperature", form.temperature)
        + number("top_p", form.top_p)
        + number("top_k", form.top_k, "1")
        + number("seed", form.seed, "1")
        + number("num_samples", form.num_samples, "1")
        + '</p><button type="submit" id="sample">Sample</button></form>'
    )


def _results(out: SampleResponse, tokenizer: PreTrainedTokenizerBase) -> str:
    """Each sample's text, then its tokens shaded by probability (the logprob on hover and in
    each token's ``data-logprob``)."""
    parts = []
    for i, seq in enumerate(out.sequences):
        logprobs = seq.logprobs or [math.nan] * len(seq.tokens)
        spans = []
        for token, logprob in zip(seq.tokens, logprobs, strict=False):
            piece = tokenizer.decode([token])
            p = math.exp(logprob) if math.isfinite(logprob) else 1.0
            shade = f"hsl(210, 70%, {97 - 35 * p:.0f}%)"
            spans.append(
                f'<span class="token" data-logprob="{logprob:.4f}" style="background:{shade}" '
                f'title="token {token}, logprob {logprob:.4f}">{esc(piece)}</span>'
            )
        text = tokenizer.decode(seq.tokens)
        parts.append(
            f'<h2>Sample {i + 1} <span class="muted">({len(seq.tokens)} tokens, '
            f'{esc(seq.stop_reason)})</span></h2><pre class="sample">{esc(text)}</pre>'
            f'<div class="tokens">{"".join(spans)}</div>'
        )
    return '<div id="results">' + "".join(parts) + "</div>"
