"""One datum at the default model's full 8,192-token context, through the SDK (issue 18, Done-when
2): it trains within a bounded memory, and the trainer's logprobs of it are the sampler's.

The session server serves the default model as configs/local.yaml does: 8,192 tokens of context,
gradient checkpointing for micro-batches of 2,048 tokens or more, logprobs in chunks of 2,048
tokens. The trainer's peak memory is read from the kernel (VmHWM of the rank's process, reset
just before the step), so it is the step's own peak, not one of an earlier test's; the idle
figure is read once the rank has given back the heap an earlier test's short steps kept (5 s
after its last call), so it is what the rank holds, not what it keeps for reuse.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL
from tests.integration.helpers import datum, model_status, proc_memory_kib, random_tokens
from tinsmith.actors.malloc_tuning import IDLE_RELEASE_SECONDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LENGTH = 8192
PEAK_BOUND_GIB = 3.0


def test_an_8k_datum_trains_in_bounded_memory_and_its_logprobs_are_the_samplers(
    server: object, service_client: tinker.ServiceClient
) -> None:
    workers = model_status(server, DEFAULT_MODEL)["workers"]
    pid = next(w["pid"] for w in workers if w["kind"] == "trainer")  # type: ignore[index,union-attr]
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    tokens = random_tokens(8192, LENGTH + 1)
    time.sleep(IDLE_RELEASE_SECONDS + 1)
    idle = proc_memory_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM, the peak RSS, to now
    fb = tc.forward_backward([datum(tokens)], "cross_entropy").result()
    peak = proc_memory_kib(pid, "VmHWM")
    tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
    above = (peak - idle) / 2**20
    print(
        f"{LENGTH}-token datum: trainer RSS idle {idle / 2**20:.2f} GiB, peak {above:.2f} GiB above"
    )
    assert fb.metrics["num_tokens:sum"] == LENGTH
    assert above <= PEAK_BOUND_GIB, f"peak {above:.2f} GiB above idle"

    # Before its first step the adapter changes nothing (LoRA's B starts at zero), so the base
    # model's sampler scores the same weights the trainer just ran. compute_logprobs samples one
    # token after its prompt, so the prompt is the datum's first 8,191 tokens: the logprobs of
    # tokens 1..8190, the trainer's first 8,190.
    trainer_lps = np.array(fb.loss_fn_outputs[0]["logprobs"].tolist())
    sampler = service_client.create_sampling_client(base_model=DEFAULT_MODEL).result()
    prompt = types.ModelInput.from_ints(tokens[: LENGTH - 1])
    scored = sampler.compute_logprobs(prompt).result()
    assert len(scored) == LENGTH - 1 and scored[0] is None
    sampled = np.array(scored[1:], dtype=float)
    print(f"largest |trainer - sampler| logprob: {np.abs(trainer_lps[:-2] - sampled).max():.2e}")
    np.testing.assert_allclose(trainer_lps[:-2], sampled, atol=1e-3)
