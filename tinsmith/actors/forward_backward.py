"""A trainer rank's forward/backward compute: micro-batches, target logprobs and Tinker's losses.

Gradients accumulate into the adapter's engine across calls until ``optim_step``. Every rank
runs the same number of micro-batches (batching gives the ones short of datums empty batches),
because a data-parallel backward, and under ZeRO-3 a forward, is a collective.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tinsmith.errors import UserInputError
from tinsmith.types.internal import DatumResult, MicroBatch, RankResult, RankWork

if TYPE_CHECKING:
    import torch

    from tinsmith.actors.adapter_engine import DeepSpeedEngine
    from tinsmith.actors.image_inputs import ImageInputs


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
            _dummy_pass(engine, device, backward=not work.forward_only, zero3=zero3)
            continue
        with torch.set_grad_enabled(not work.forward_only):
            logprobs_B_T, inputs, mask_B_T = _forward(engine, batch, device, image_inputs)
            # where, not multiply: a non-finite loss on a padding position must not leak in as NaN
            loss_B_T = torch.where(
                mask_B_T > 0, loss_fn(logprobs_B_T, inputs, work.loss_fn_config), 0.0
            )
            if not work.forward_only:
                engine.backward(loss_B_T.sum() * work.grad_scale, scale_wrt_gas=False)
        loss_total += float(loss_B_T.detach().sum())
        for row, datum in enumerate(batch.datums):
            n = datum.length
            tokens += n
            results.append(
                DatumResult(
                    index=datum.index,
                    logprobs=logprobs_B_T[row, :n].detach().float().tolist(),
                    elementwise_loss=loss_B_T[row, :n].detach().float().tolist(),
                )
            )
    return RankResult(
        datums=results,
        loss_sum=loss_total,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )


def _dummy_pass(engine: DeepSpeedEngine, device: torch.device, backward: bool, zero3: bool) -> None:
    """A zero-loss pass over one token, for a rank with fewer micro-batches than its peers.

    Data-parallel backward passes are collectives, and under ZeRO-3 so are forward passes (they
    gather the adapter's partitioned weights), so every rank must run as many as the others.
    """
    import torch

    if not backward and not zero3:
        return
    input_ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    with torch.set_grad_enabled(backward):
        logits = engine(input_ids=input_ids)
        if backward:
            engine.backward(logits.float().sum() * 0.0, scale_wrt_gas=False)


def _forward(
    engine: DeepSpeedEngine,
    batch: MicroBatch,
    device: torch.device,
    image_inputs: ImageInputs | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Target logprobs ``(B, T)`` in fp32, the padded loss inputs and the padding mask."""
    import torch

    datums = batch.datums
    longest = max(d.length for d in datums)
    B = len(datums)
    input_ids = torch.zeros((B, longest), dtype=torch.long)
    targets = torch.zeros((B, longest), dtype=torch.long)
    mask = torch.zeros((B, longest), dtype=torch.float32)
    keys = ["weights", *sorted(datums[0].extra)]
    inputs = {k: torch.zeros((B, longest), dtype=torch.float32) for k in keys}
    for row, d in enumerate(datums):
        n = d.length
        input_ids[row, :n] = torch.tensor(d.input_tokens)
        targets[row, :n] = torch.tensor(d.target_tokens)
        mask[row, :n] = 1.0
        inputs["weights"][row, :n] = torch.tensor(d.weights)
        for k, v in d.extra.items():
            inputs[k][row, :n] = torch.tensor(v)
    # Without padding, no mask: attention then takes the fast causal path.
    attention_mask = None if all(d.length == longest for d in datums) else mask.to(device).long()
    images = [image for d in datums for image in d.images]
    pixels: dict[str, torch.Tensor] = {}
    if images:
        if image_inputs is None:
            raise UserInputError("this model takes text only, and a datum has images")
        pixels = {k: v.to(device) for k, v in image_inputs(images, input_ids).items()}
    logits_B_T_V = engine(input_ids=input_ids.to(device), attention_mask=attention_mask, **pixels)
    logprobs_B_T = target_logprobs(logits_B_T_V, targets.to(device))
    return logprobs_B_T, {k: v.to(device) for k, v in inputs.items()}, mask.to(device)


def target_logprobs(logits_B_T_V: torch.Tensor, targets_B_T: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in fp32.

    Uses the fused cross-entropy kernel (``-cross_entropy`` is the target logprob) rather than a
    full log-softmax plus gather: it never materialises the ``B x T x V`` log-probabilities and
    its backward is a single softmax-minus-one-hot, which is most of a LoRA step's cost at
    SmolLM2's 49k vocabulary.
    """
    import torch

    B, T, V = logits_B_T_V.shape
    nll = torch.nn.functional.cross_entropy(
        logits_B_T_V.float().reshape(B * T, V), targets_B_T.reshape(B * T), reduction="none"
    )
    return -nll.reshape(B, T)
