"""Checkpoints through the official SDK: exact resume, REST listings and management, the
`tinker` CLI's download, and bad checkpoint requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types

from tests.conftest import DEFAULT_MODEL, OTHER_TENANT_KEY, ZERO3_MODEL
from tests.integration.helpers import (
    checkpoint_dir,
    datum,
    expect_user_error,
    local_model_dir,
    random_tokens,
    read_adapter,
)

pytestmark = pytest.mark.integration

ADAM = types.AdamParams(
    learning_rate=3e-3, beta1=0.8, beta2=0.98, eps=1e-8, weight_decay=0.05, grad_clip_norm=2.0
)


def _batches(seed: int, n: int) -> list[list[types.Datum]]:
    return [
        [datum(random_tokens(seed + 10 * i + j, 12 + 5 * j)) for j in range(3)] for i in range(n)
    ]


def _train(tc: tinker.TrainingClient, batches: list[list[types.Datum]]) -> list[float]:
    losses = []
    for batch in batches:
        out = tc.forward_backward(batch, "cross_entropy").result()
        tc.optim_step(ADAM).result()
        losses.append(out.metrics["loss:sum"])
    return losses


def _adapter(server: object, tc: tinker.TrainingClient, name: str) -> dict[str, np.ndarray]:
    return read_adapter(checkpoint_dir(server, tc.save_weights_for_sampler(name).result().path))


def test_resume_from_save_state_is_exact(
    service_client: tinker.ServiceClient, server: object
) -> None:
    batches = _batches(3000, 6)
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    _train(tc, batches[:3])
    saved = tc.save_state("resume-3").result().path
    assert saved == f"tinker://{tc.model_id}/weights/resume-3"
    expected_losses = _train(tc, batches[3:])
    expected = _adapter(server, tc, "resume-end")

    resumed = service_client.create_training_client_from_state_with_optimizer(saved).result()
    assert resumed.model_id != tc.model_id
    assert resumed.get_info().lora_rank == 8
    losses = _train(resumed, batches[3:])
    got = _adapter(server, resumed, "resumed-end")
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)

    # load_state_with_optimizer on a live client: the same as a client created from the state.
    reloaded = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    reloaded.load_state_with_optimizer(saved).result()
    np.testing.assert_allclose(_train(reloaded, batches[3:]), expected_losses, rtol=1e-6)

    # Without the optimizer: the same weights, and a fresh AdamW, whose first step moves every
    # element with a gradient by (almost exactly) the learning rate.
    fresh = service_client.create_training_client_from_state(saved).result()
    loaded = _adapter(server, fresh, "fresh-0")
    at_save = read_adapter(checkpoint_dir(server, saved))
    for key, value in at_save.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    lr = 1e-3
    fresh.forward_backward(batches[3], "cross_entropy").result()
    fresh.optim_step(types.AdamParams(learning_rate=lr)).result()
    stepped = _adapter(server, fresh, "fresh-1")
    moves = np.concatenate([np.abs(stepped[k] - loaded[k]).ravel() for k in loaded])
    moved = moves[moves > 0]
    assert moved.size > 0.9 * moves.size
    np.testing.assert_allclose(np.median(moved), lr, rtol=1e-3)


def test_listings_publish_ttl_delete_and_weights_info(
    service_client: tinker.ServiceClient, server: object
) -> None:
    tc = service_client.create_lora_training_client(
        base_model=DEFAULT_MODEL, rank=4, train_mlp=False
    ).result()
    _train(tc, _batches(3100, 1))
    paths = {name: tc.save_state(name).result().path for name in ("a", "b", "c")}
    sampler_path = tc.save_weights_for_sampler("s").result().path
    rest = tinker.RestClient(base_url=server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]

    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert {c.tinker_path for c in listed} == {*paths.values(), sampler_path}
    types_by_path = {c.tinker_path: c.checkpoint_type for c in listed}
    assert types_by_path[paths["a"]] == "training" and types_by_path[sampler_path] == "sampler"
    assert all(c.size_bytes and c.size_bytes > 0 for c in listed)

    run = rest.get_training_run(tc.model_id).result()
    assert run.base_model == DEFAULT_MODEL and run.lora_rank == 4 and run.is_lora
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == paths["c"]
    assert (
        run.last_sampler_checkpoint is not None
        and run.last_sampler_checkpoint.tinker_path == sampler_path
    )
    runs = rest.list_training_runs(limit=1000).result()
    assert tc.model_id in {r.training_run_id for r in runs.training_runs}

    # Pagination: pages of 2 cover every checkpoint exactly once.
    first = rest.list_user_checkpoints(limit=2, offset=0).result()
    assert (
        first.cursor is not None and first.cursor.total_count >= 4 and len(first.checkpoints) == 2
    )
    seen: list[str] = []
    for offset in range(0, first.cursor.total_count, 2):
        seen += [
            c.tinker_path
            for c in rest.list_user_checkpoints(limit=2, offset=offset).result().checkpoints
        ]
    assert len(seen) == len(set(seen)) == first.cursor.total_count
    assert set(paths.values()) <= set(seen)

    rest.publish_checkpoint_from_tinker_path(paths["a"]).result()
    public = {
        c.tinker_path: c.public for c in rest.list_checkpoints(tc.model_id).result().checkpoints
    }
    assert public[paths["a"]] and not public[paths["b"]]
    rest.unpublish_checkpoint_from_tinker_path(paths["a"]).result()
    public = {
        c.tinker_path: c.public for c in rest.list_checkpoints(tc.model_id).result().checkpoints
    }
    assert not public[paths["a"]]

    info = rest.get_weights_info_by_tinker_path(paths["a"]).result()
    assert info.base_model == DEFAULT_MODEL and info.lora_rank == 4 and info.is_lora
    assert info.train_mlp is False and info.train_attn is True

    rest.set_checkpoint_ttl_from_tinker_path(paths["c"], 1).result()
    expires = {
        c.tinker_path: c.expires_at for c in rest.list_checkpoints(tc.model_id).result().checkpoints
    }
    assert expires[paths["c"]] is not None
    time.sleep(1.5)
    remaining = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert paths["c"] not in remaining and paths["a"] in remaining
    expect_user_error(
        service_client.create_training_client_from_state(paths["c"]), "does not exist"
    )

    rest.delete_checkpoint_from_tinker_path(paths["b"]).result()
    remaining = {c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints}
    assert remaining == {paths["a"], sampler_path}
    with pytest.raises(tinker.NotFoundError):
        rest.delete_checkpoint_from_tinker_path(paths["b"]).result()


def _cli(server: object, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        TINKER_BASE_URL=server.base_url,  # type: ignore[attr-defined]
        TINKER_API_KEY="tml-tests",
    )
    cli = Path(sys.executable).with_name("tinker")
    return subprocess.run(
        [str(cli), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_lists_and_downloads_a_checkpoint_peft_loads(
    service_client: tinker.ServiceClient, server: object, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8).result()
    _train(tc, _batches(3200, 2))
    path = tc.save_state("for-download").result().path
    sampler = tc.save_weights_and_get_sampling_client().result()

    listing = _cli(
        server, "-f", "json", "checkpoint", "list", "--run-id", tc.model_id, cwd=tmp_path
    )
    assert listing.returncode == 0, listing.stderr
    assert path in listing.stdout

    done = _cli(
        server,
        "-f",
        "json",
        "checkpoint",
        "download",
        path,
        "--output",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    target = Path(json.loads(done.stdout)["destination"])
    assert (target / "adapter_config.json").is_file() and (
        target / "adapter_model.safetensors"
    ).is_file()
    # The temporary export the CLI made is deleted again.
    rest = tinker.RestClient(base_url=server.base_url, api_key="tml-tests")  # type: ignore[attr-defined]
    exports = [  # the CLI names its export "download" (other tests' exports may be listed)
        c.tinker_path
        for c in rest.list_user_checkpoints(limit=10000).result().checkpoints
        if c.checkpoint_type == "external" and c.tinker_path.endswith("/external_weights/download")
    ]
    assert exports == []

    tokens = random_tokens(3300, 24)
    base = AutoModelForCausalLM.from_pretrained(local_model_dir(DEFAULT_MODEL), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(target))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens[:-1]])).logits.float()
    peft_logprobs = (
        torch.log_softmax(logits, -1)[0].gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0].numpy()
    )
    sampled = sampler.compute_logprobs(types.ModelInput.from_ints(tokens)).result()
    np.testing.assert_allclose(np.array(sampled[1:], dtype=np.float64), peft_logprobs, atol=1e-3)


def test_bad_checkpoint_requests_are_user_errors(service_client: tinker.ServiceClient) -> None:
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=4).result()
    _train(tc, _batches(3400, 1))
    path = tc.save_state("taken").result().path
    expect_user_error(tc.save_state("taken"), "already exists")
    assert tc.save_state("taken", overwrite=True).result().path == path
    expect_user_error(tc.save_state("no/slashes"), "must be 1-128 characters")
    expect_user_error(tc.save_state("bad", ttl_seconds=0), "ttl_seconds")
    sampler_path = tc.save_weights_for_sampler("only-for-sampling").result().path

    expect_user_error(
        service_client.create_training_client_from_state("tinker://nope"),
        "tinker://<run>/<kind>/<name>",
    )
    expect_user_error(
        service_client.create_training_client_from_state(sampler_path), "sampler checkpoint"
    )
    expect_user_error(
        service_client.create_training_client_from_state(path, base_model=ZERO3_MODEL),
        "differs from the checkpoint",
    )
    expect_user_error(
        service_client.create_training_client_from_state(path + "-missing"), "does not exist"
    )
    expect_user_error(tc.load_state(sampler_path), "sampler checkpoint")
    # The client keeps working after every refusal, and load_state
    # restores the saved weights in place.
    _train(tc, _batches(3500, 1))
    tc.load_state(path).result()
    assert tc.save_state("after-errors").result().path.endswith("/weights/after-errors")


def test_copy_weights_shares_the_archive_and_outlives_its_source(
    service_client: tinker.ServiceClient, server: object
) -> None:
    """ServiceClient.copy_weights (into its project) and RestClient.copy_weights: the copy is a
    run of its own in a new session of that project, loads as the source did, and keeps the
    source's weights after the source is saved over and then deleted (the two share one
    archive, which stays while either names it). Another tenant may copy only a published one."""
    base_url = server.base_url  # type: ignore[attr-defined]
    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=2).result()
    _train(tc, _batches(3100, 1))
    source = tc.save_state("to-copy").result().path
    at_save = read_adapter(checkpoint_dir(server, source))
    archive = tinker.ServiceClient(project_id="archive", base_url=base_url, api_key="tml-tests")
    copy = archive.copy_weights(source).result()
    run_id = copy[len("tinker://") :].split("/")[0]
    assert copy == f"tinker://{run_id}/weights/to-copy" and run_id != tc.model_id, copy

    _train(tc, _batches(3101, 1))
    assert tc.save_state("to-copy", overwrite=True).result().path == source
    rest = tinker.RestClient(base_url=base_url, api_key="tml-tests")
    rest.delete_checkpoint(tc.model_id, "weights/to-copy").result()
    kept = read_adapter(checkpoint_dir(server, copy))
    for key, value in at_save.items():
        np.testing.assert_array_equal(kept[key], value, err_msg=key)
    loaded = _adapter(server, service_client.create_training_client_from_state(copy).result(), "c")
    for key, value in at_save.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    assert rest.get_training_run(run_id).result().base_model == DEFAULT_MODEL
    assert rest.get_training_run_by_tinker_path(copy).result().training_run_id == run_id
    session = run_id.split(":train:")[0]
    query = types.SessionSearchRequest(session_id=session, project_ids=["archive"])
    assert [s.session_id for s in rest.search_sessions(query).result().sessions] == [session]

    other = tinker.RestClient(base_url=base_url, api_key=OTHER_TENANT_KEY)
    with pytest.raises(tinker.NotFoundError):
        other.copy_weights(copy, "theirs").result()
    rest.publish_checkpoint_from_tinker_path(copy).result()
    theirs = other.copy_weights(copy, "theirs", ttl_seconds=3600).result()
    their_run = theirs[len("tinker://") :].split("/")[0]
    assert other.get_training_run(their_run).result().training_run_id == their_run
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run(their_run).result()
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        rest.copy_weights(copy, "archive", ttl_seconds=5).result()


def test_cli_reads_and_changes_runs_checkpoints_and_models(
    service_client: tinker.ServiceClient, server: object
) -> None:
    """The `tinker` CLI's run, checkpoint, model, auth (status, whoami) and version commands
    against the server, run in this process (click's runner: the CLI's own code, without a new
    interpreter's imports per command)."""
    from click.testing import CliRunner
    from tinker.cli.__main__ import main_cli

    base_url = server.base_url  # type: ignore[attr-defined]
    env = {"TINKER_BASE_URL": base_url, "TINKER_API_KEY": "tml-tests"}

    def cli(*args: str) -> str:
        done = CliRunner().invoke(main_cli, ["-f", "json", *args], env=env)
        assert done.exit_code == 0, (args, done.output, done.exception)
        return done.output

    tc = service_client.create_lora_training_client(base_model=DEFAULT_MODEL, rank=2).result()
    path = tc.save_state("for-cli").result().path
    assert tc.model_id in cli("run", "list", "--limit", "0")
    assert json.loads(cli("run", "info", tc.model_id))["training_run_id"] == tc.model_id
    assert json.loads(cli("checkpoint", "info", path))["tinker_path"] == path
    rest = tinker.RestClient(base_url=base_url, api_key="tml-tests")

    def stored() -> types.Checkpoint:
        [checkpoint] = rest.list_checkpoints(tc.model_id).result().checkpoints
        return checkpoint

    cli("checkpoint", "publish", path)
    assert stored().public
    cli("checkpoint", "unpublish", path)
    assert not stored().public
    cli("checkpoint", "set-ttl", path, "--ttl", "7200")
    assert stored().expires_at is not None
    cli("checkpoint", "delete", path, "--yes")
    assert rest.list_checkpoints(tc.model_id).result().checkpoints == []
    assert DEFAULT_MODEL in cli("model", "list")
    assert (
        "Tinker accessible: yes" in CliRunner().invoke(main_cli, ["auth", "status"], env=env).output
    )
    # whoami reads the JWT the SDK got for its key: the tenant of configs/test.yaml's key
    assert json.loads(cli("auth", "whoami")) == {
        "user_urn": "tml:user:tests",
        "org_urn": "tml:organization:tests",
        "email": None,
    }
    who = rest.whoami().result()
    assert (who.user_urn, who.org_urn) == ("tml:user:tests", "tml:organization:tests")
    with tempfile.TemporaryDirectory(prefix="tinsmith-cli-home-") as home:
        # login checks the pasted key against the server and stores it; logout forgets it
        # (a pasted key stays valid on the server: only keys the CLI made are revoked)
        login_env = {**env, "HOME": home}
        done = CliRunner().invoke(main_cli, ["auth", "login"], env=login_env, input="tml-tests\n")
        assert done.exit_code == 0 and "(tests)" in done.output, done.output
        done = CliRunner().invoke(main_cli, ["auth", "logout"], env=login_env)
        assert done.exit_code == 0 and "still active" in done.output, done.output
        # the session's timeline, downloaded as the CLI names it
        session = tc.model_id.split(":train:")[0]
        trace = Path(home) / "session.pftrace"
        cli("session", "export-trace", session, "--output", str(trace))
        names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"]}
        assert {"create_model", "save_weights"} <= names, names
    cli("version")
