"""A trainer rank's forward/backward compute: micro-batches, target logprobs and Tinker's losses.

Gradients accumulate into the adapter's engine across calls until ``optim_step``. Every rank
runs the same number of micro-batches (batching gives the ones short of datums empty batches),
because a data-parallel backward, and under ZeRO-3 a forward, is a collective.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tinsmith.actors import malloc_tuning
from tinsmith.actors.loss_specs import DATUM_KEY
from tinsmith.errors import UserInputError
from tinsmith.types.internal import DatumResult, MicroBatch, RankResult, RankWork

if TYPE_CHECKING:
    import torch

    from tinsmith.actors.adapter_engine import DeepSpeedEngine
    from tinsmith.actors.image_inputs import ImageInputs
    from tinsmith.actors.segment_attention import Segments


def run_forward_backward(
    engine: DeepSpeedEngine,
    work: RankWork,
    device: torch.device,
    zero3: bool,
    image_inputs: ImageInputs | None = None,
) -> RankResult:
    """Run every micro-batch of ``work`` through ``engine`` (the adapter already active);
    ``image_inputs`` turns a vision model's images into its pixel inputs."""
    import torch

    from tinsmith.actors.losses import LOSSES

    started = time.perf_counter()
    loss_fn = LOSSES[work.loss_fn]
    results: list[DatumResult] = []
    loss_total = 0.0
    tokens = 0
    for batch in work.micro_batches:
        if not batch.datums:
            _dummy_pass(engine, batch, device, backward=not work.forward_only, zero3=zero3)
            continue
        malloc_tuning.tune_for(long_rows=batch.checkpoint)
        with torch.set_grad_enabled(not work.forward_only):
            rows = _rows(batch, device, image_inputs)
            logprobs_B_T = engine(
                input_ids=rows.input_ids,
                targets=rows.targets,
                attention_mask=rows.attention_mask,
                position_ids=rows.position_ids,
                segments=rows.segments,
                checkpoint=batch.checkpoint and not work.forward_only,
                logit_chunks=batch.logit_chunks,
                **rows.pixels,
            )
            # where, not multiply: a non-finite loss on a padding position must not leak in as NaN
            loss_B_T = torch.where(
                rows.mask > 0, loss_fn(logprobs_B_T, rows.loss_inputs, work.loss_fn_config), 0.0
            )
            if not work.forward_only:
                engine.backward(loss_B_T.sum() * work.grad_scale, scale_wrt_gas=False)
        loss_total += float(loss_B_T.detach().sum())
        logprobs = logprobs_B_T.detach().float()
        losses = loss_B_T.detach().float()
        for datum, (row, start) in zip(batch.datums, rows.places, strict=True):
            end = start + datum.length
            tokens += datum.length
            results.append(
                DatumResult(
                    index=datum.index,
                    logprobs=logprobs[row, start:end].tolist(),
                    elementwise_loss=losses[row, start:end].tolist(),
                )
            )
    return RankResult(
        datums=results,
        loss_sum=loss_total,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )


def _dummy_pass(
    engine: DeepSpeedEngine, batch: MicroBatch, device: torch.device, backward: bool, zero3: bool
) -> None:
    """A zero-loss pass over one token, for a rank with fewer micro-batches than its peers.

    Data-parallel backward passes are collectives, and under ZeRO-3 so are forward passes (they
    gather the adapter's partitioned weights): every rank must run as many as the others, with
    the same checkpointing and logit chunks (so its layers are called as often as theirs).
    """
    import torch

    if not backward and not zero3:
        return
    token = torch.zeros((1, 1), dtype=torch.long, device=device)
    with torch.set_grad_enabled(backward):
        logprobs = engine(
            input_ids=token,
            targets=token,
            checkpoint=batch.checkpoint and backward,
            logit_chunks=batch.logit_chunks,
        )
        if backward:
            engine.backward(logprobs.sum() * 0.0, scale_wrt_gas=False)


@dataclass
class _Rows:
    """A micro-batch as tensors ``(B, T)``: the model's inputs (``segments`` and restarting
    ``position_ids`` for a packed row, ``attention_mask`` for padded rows), the loss inputs and
    mask, and where each datum sits (row, first position)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    loss_inputs: dict[str, torch.Tensor]
    mask: torch.Tensor
    places: list[tuple[int, int]]
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    segments: Segments | None = None
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)


def _rows(
    batch: MicroBatch, device: torch.device, image_inputs: ImageInputs | None = None
) -> _Rows:
    """Packed: one row of every datum in turn, positions restarting at each; else right-padded
    rows, one per datum."""
    import torch

    datums = batch.datums
    if batch.packed:
        starts = [0]
        for d in datums:
            starts.append(starts[-1] + d.length)
        places = [(0, start) for start in starts[:-1]]
        B, T = 1, starts[-1]
    else:
        places = [(row, 0) for row in range(len(datums))]
        B, T = len(datums), max(d.length for d in datums)
    input_ids = torch.zeros((B, T), dtype=torch.long)
    targets = torch.zeros((B, T), dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    keys = ["weights", DATUM_KEY, *sorted(datums[0].extra)]
    inputs = {k: torch.zeros((B, T), dtype=torch.float32) for k in keys}
    for ordinal, (d, (row, start)) in enumerate(zip(datums, places, strict=True), start=1):
        span = slice(start, start + d.length)
        inputs[DATUM_KEY][row, span] = float(ordinal)
        input_ids[row, span] = torch.tensor(d.input_tokens)
        targets[row, span] = torch.tensor(d.target_tokens)
        positions[row, span] = torch.arange(d.length)
        mask[row, span] = 1.0
        inputs["weights"][row, span] = torch.tensor(d.weights)
        for k, v in d.extra.items():
            inputs[k][row, span] = torch.tensor(v)
    rows = _Rows(
        input_ids=input_ids.to(device),
        targets=targets.to(device),
        loss_inputs={k: v.to(device) for k, v in inputs.items()},
        mask=mask.to(device),
        places=places,
    )
    if batch.packed:
        rows.position_ids = positions.to(device)
        rows.segments = tuple(itertools.pairwise(starts))
    elif any(d.length < T for d in datums):  # without padding, no mask: the fast causal path
        rows.attention_mask = rows.mask.long()
    images = [image for d in datums for image in d.images]
    if images:
        if image_inputs is None:
            raise UserInputError("this model takes text only, and a datum has images")
        rows.pixels = {k: v.to(device) for k, v in image_inputs(images, input_ids).items()}
    return rows
