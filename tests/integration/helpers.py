"""Small helpers shared by the SDK integration tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types


def datum(tokens: list[int], weights: list[float] | None = None) -> types.Datum:
    """Next-token datum: input tokens[:-1], targets tokens[1:]."""
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": weights if weights is not None else [1.0] * n,
        },
    )


# A tiny random-weight Qwen3 of configs/models.yaml: quick to start, for the tests that start
# servers of their own to show promises that hold for any model.
TINY_MODEL = "tinsmith/tiny-qwen3"


def tiny_model_spec() -> dict[str, object]:
    """configs/models.yaml's entry of TINY_MODEL (`make install` prepares it)."""
    import yaml

    from tests.conftest import ROOT

    models = yaml.safe_load((ROOT / "configs" / "models.yaml").read_text())["models"]
    return next(m for m in models if m["name"] == TINY_MODEL)  # type: ignore[no-any-return]


def proc_memory_kib(pid: int, field: str) -> int:
    """A memory figure of a process from ``/proc/<pid>/status`` (VmRSS, VmHWM...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def random_tokens(seed: int, length: int, vocab: int = 49152) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(100, vocab, size=length)]


def local_model_dir(base_model: str) -> str:
    """The server's directory of a configs/test.yaml model (prepared, so weights load from it)."""
    from tests.conftest import ROOT
    from tinsmith.cluster.config import load_config
    from tinsmith.cluster.model_cache import prepare_all

    return str(prepare_all(load_config(ROOT / "configs" / "test.yaml"))[base_model])


def read_adapter(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def checkpoint_dir(server: object, tinker_path: str) -> Path:
    """Download a checkpoint's archive through the server's archive-URL route and unpack it
    (verified against its manifest) into a fresh directory."""
    import json
    import urllib.request
    import uuid

    from tinsmith.storage.archive import unpack

    run, kind, name = tinker_path[len("tinker://") :].split("/")
    base = server.base_url  # type: ignore[attr-defined]
    headers = {"X-API-Key": "tml-tests"}
    req = urllib.request.Request(
        f"{base}/api/v1/training_runs/{run}/checkpoints/{kind}/{name}/archive", headers=headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        url = json.loads(resp.read())["url"]
    root = server.workdir / "downloads" / uuid.uuid4().hex[:8]  # type: ignore[attr-defined]
    root.mkdir(parents=True)
    archive = root / "checkpoint.tar"
    with urllib.request.urlopen(url, timeout=60) as resp:
        archive.write_bytes(resp.read())
    unpack(archive, root / "files")
    return root / "files"


def expect_user_error(future: object, *needles: str) -> None:
    """The request is refused as the client's fault, naming the problem: either at once with a 4xx
    (``BadRequestError``) or as a future that fails with category ``user``."""
    with pytest.raises((tinker.RequestFailedError, tinker.BadRequestError)) as info:
        future.result()  # type: ignore[attr-defined]
    if isinstance(info.value, tinker.RequestFailedError):
        assert str(info.value.category).lower().endswith("user"), info.value.category
        message = info.value.message
    else:
        message = str(info.value)
    for needle in needles:
        assert needle in message, message


def model_status(server: object, base_model: str) -> dict[str, object]:
    """``GET /api/v1/tinsmith/status`` for one base model: workers (memory, adapters, node), and per
    sampler replica: alive, requests served, restarts."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{server.base_url}/api/v1/tinsmith/status",  # type: ignore[attr-defined]
        headers={"X-API-Key": "tml-tests"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        models = json.loads(resp.read())
    return next(m for m in models if m["base_model"] == base_model)  # type: ignore[no-any-return]


def check_trainer_restart(
    target: object, base_model: str, victim_rank: int, during_export: bool = False
) -> None:
    """SIGKILL trainer rank ``victim_rank`` of ``base_model`` while another client's
    forward_backward requests are in flight. Every request resolves (none hangs); at least one fails
    with the retryable server error naming the death; the ranks come back with new PIDs; the victim
    client is exactly at its last optimizer step, and one more step equals a client that never saw a
    crash (so the AdamW state came back too); the other client continues.

    ``during_export``: the victim's ``save_weights_and_get_sampling_client`` is sent while the
    other client's first (long) forward_backward runs, so its export is queued on the rank behind
    it when the rank dies; that save fails with the retryable error naming it, and after the
    restart the victim's next save works and its sampling client samples."""
    service = tinker.ServiceClient(base_url=target.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    probe = [datum(random_tokens(7000, 16))]
    batches = [[datum(random_tokens(7001 + i, 24))] for i in range(3)]
    adam = types.AdamParams(learning_rate=1e-3, weight_decay=0.01, grad_clip_norm=1.0)

    def step(tc: tinker.TrainingClient, i: int) -> None:
        tc.forward_backward(batches[i], "cross_entropy").result()
        tc.optim_step(adam).result()

    def logprobs(tc: tinker.TrainingClient) -> np.ndarray:
        out = tc.forward(probe, "cross_entropy").result()
        return np.array(out.loss_fn_outputs[0]["logprobs"].data)

    def trainer_pids() -> dict[int, int]:
        workers = model_status(target, base_model)["workers"]
        return {w["index"]: w["pid"] for w in workers if w["kind"] == "trainer"}  # type: ignore[union-attr, index, misc]

    victim = service.create_lora_training_client(base_model=base_model, rank=8).result()
    step(victim, 0)
    step(victim, 1)
    before = logprobs(victim)
    if during_export:
        # A first sync: the rank's node is then known, so the save under test asks the rank
        # only for the export (nothing in its turn waits on the rank).
        victim.save_weights_and_get_sampling_client().result(timeout=600)
    restarts = model_status(target, base_model)["trainer_restarts"]
    old = trainer_pids()  # now: a status call would queue behind the load

    # Load: another client's forward_backward requests (4 x 128 tokens each) in flight, the first
    # of them, with an export to queue behind it, 6 x 400 tokens (seconds of work on any CPU).
    bystander = service.create_lora_training_client(base_model=base_model, rank=4).result()
    load = [datum(random_tokens(7100 + i, 128)) for i in range(4)]
    first = [datum(random_tokens(7200 + i, 400)) for i in range(6)] if during_export else load
    futures = [bystander.forward_backward(first, "cross_entropy")]
    futures += [bystander.forward_backward(load, "cross_entropy") for _ in range(2)]
    save = None
    if during_export:
        time.sleep(1.0)  # the first forward_backward is running on the rank
        save = victim.save_weights_and_get_sampling_client()  # its export queues behind it
    time.sleep(1.0)
    os.kill(old[victim_rank], signal.SIGKILL)
    if save is not None:
        with pytest.raises(tinker.RequestFailedError) as info:
            save.result(timeout=600)
        message = str(info.value)
        assert str(info.value.category).lower().endswith("server"), info.value.category
        assert f"trainer rank {victim_rank}" in message and "retry" in message, message
        assert "died during save_weights_for_sampler" in message, message
    _expect_died_or_ok(futures)

    deadline = (
        time.monotonic() + 300
    )  # the restart may still be finishing if the last request was the one that died
    while (status := model_status(target, base_model))["trainer_restarts"] == restarts:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status["trainer_restarts"] == restarts + 1, status  # type: ignore[operator]
    new = trainer_pids()
    assert sorted(new) == sorted(old) and not set(new.values()) & set(old.values()), (old, new)

    # The victim is exactly at its last optimizer step, and its AdamW state came back too: one more
    # step gives what a client that never saw a crash gets from the same three steps.
    np.testing.assert_allclose(logprobs(victim), before, atol=1e-5)
    step(victim, 2)
    reference = service.create_lora_training_client(base_model=base_model, rank=8).result()
    for i in range(3):
        step(reference, i)
    np.testing.assert_allclose(logprobs(victim), logprobs(reference), atol=1e-4)
    if during_export:  # the failed save left the victim usable: the next one works and samples
        sampler = victim.save_weights_and_get_sampling_client().result(timeout=600)
        prompt = types.ModelInput.from_ints(random_tokens(7600, 8))
        out = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=4)).result(timeout=600)
        assert len(out.sequences[0].tokens) == 4

    # The bystander goes on too (its first call may report, once,
    # the gradients the restart dropped).
    try:
        bystander.forward_backward(load, "cross_entropy").result()
    except tinker.RequestFailedError as exc:
        assert "were lost" in str(exc), exc
        bystander.forward_backward(load, "cross_entropy").result()
    assert "grad_norm:mean" in bystander.optim_step(adam).result().metrics


def _expect_died_or_ok(futures: list[object]) -> None:
    """None of ``futures`` hangs; a failure is the server's, retryable, and says what happened;
    at least one died with the rank."""
    outcomes = []
    for future in futures:
        try:
            future.result(timeout=600)  # type: ignore[attr-defined]
            outcomes.append("ok")
        except tinker.RequestFailedError as exc:
            assert str(exc.category).lower().endswith("server"), exc.category
            assert (
                "died during forward_backward" in str(exc) and "retry" in str(exc)
            ) or "were lost" in str(exc), exc
            outcomes.append("died" if "died" in str(exc) else "lost")
    assert "died" in outcomes, outcomes
