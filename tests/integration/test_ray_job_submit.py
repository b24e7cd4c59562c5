"""`tinsmith serve` on an existing two-node Ray cluster through `ray job submit`.

The test starts a head (`ray start --head --block`) labelled with a sampler resource and a second
node labelled with a trainer resource (`ray start --address ... --block`) on this machine, submits
the server as a Ray job with a config whose trainer ranks and sampler replicas ask for them, trains
a step and samples through the SDK, checks that the trainer rank runs on the second node and the
sampler on the head, and stops only what it started: the job, then each `ray start --block`
process group it launched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker
import yaml
from tinker import types

from tests.conftest import ROOT
from tests.integration.helpers import TINY_MODEL, datum, random_tokens, tiny_model_spec
from tinsmith.cluster.launcher import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))


def _ray_env() -> dict[str, str]:
    # A private loopback cluster: Ray 2.60's token authentication is switched off for it.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a `ray start --block` (it stops the Ray processes it started), then its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[dict[str, object]]:
    temp_dir = tempfile.mkdtemp(prefix="tsj-", dir="/tmp")  # Ray's socket paths must stay short
    logs = Path(tempfile.mkdtemp(prefix="tinsmith-rayjob-"))
    gcs_port, dashboard_port = free_port(), free_port()
    # Worker ports outside the default range, which the session's own Ray cluster uses.
    common = ["--block", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--num-cpus=2"]
    common += ["--min-worker-port=22000", "--max-worker-port=29999"]

    def own_ports() -> list[str]:
        """Per-node agent ports: the defaults may be taken by
        another Ray cluster on this machine."""
        return [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]

    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={gcs_port}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--ray-client-server-port={free_port()}", '--resources={"tinsmith_sampler": 1}',
         *own_ports(), *common],
        env=_ray_env(), stdout=(logs / "head.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    procs = [head]
    try:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        _wait(f"{dashboard}/api/version", 120, head)
        worker = subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.1:{gcs_port}", '--resources={"tinsmith_trainer": 1}',
             *own_ports(), *common],
            env=_ray_env(), stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        procs.append(worker)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=10", timeout=10) as resp:
                nodes = json.loads(resp.read())["data"]["result"]["result"]
            if len([n for n in nodes if n.get("state") == "ALIVE"]) >= 2:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"second Ray node exited; see {logs / 'worker.log'}")
            time.sleep(1)
        else:
            raise TimeoutError(f"the second Ray node did not join; see {logs}")
        yield {"dashboard": dashboard, "gcs": f"127.0.0.1:{gcs_port}", "logs": logs}
    finally:
        for proc in reversed(procs):
            _stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def test_ray_job_submit_places_trainers_on_the_labelled_node(
    two_node_cluster: dict[str, object],
) -> None:
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["models"] = [tiny_model_spec()]  # placement holds for any model; this one starts fast
    raw["trainer"]["resources"] = {"tinsmith_trainer": 1}
    raw["sampler"]["resources"] = {"tinsmith_sampler": 1}
    workdir = Path(tempfile.mkdtemp(prefix="tinsmith-job-"))
    config = workdir / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    port = free_port()
    dashboard = str(two_node_cluster["dashboard"])
    runtime_env = {
        "env_vars": {
            "HF_HUB_OFFLINE": "1",
            "TINSMITH_DATA_DIR": str(workdir / "data"),
            "TINSMITH_API_KEYS": os.environ["TINSMITH_API_KEYS"],
        }
    }
    job_id = f"tinsmith-test-{port}"
    submit = [
        RAY, "job", "submit", "--address", dashboard, "--working-dir", str(ROOT), "--no-wait",
        "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env), "--",
        sys.executable, "-m", "tinsmith.cluster.cli", "serve", "--config", str(config),
        "--port", str(port),
    ]  # fmt: skip
    done = subprocess.run(
        submit, env=_ray_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait(f"{base_url}/api/v1/healthz", 600)
        except TimeoutError:
            logs = subprocess.run(
                [RAY, "job", "logs", "--address", dashboard, job_id], capture_output=True, text=True
            )
            raise AssertionError(
                f"the submitted server never answered; job logs:\n{logs.stdout[-4000:]}"
            ) from None
        service = tinker.ServiceClient(base_url=base_url, api_key="tml-tests")
        tc = service.create_lora_training_client(base_model=TINY_MODEL, rank=4).result()
        out = tc.forward_backward([datum(random_tokens(9500, 16))], "cross_entropy").result()
        assert out.metrics["loss:sum"] > 0
        tc.optim_step(types.AdamParams()).result()
        sampler = tc.save_weights_and_get_sampling_client().result()
        seq = sampler.sample(
            types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=4)
        ).result()
        assert len(seq.sequences[0].tokens) == 4

        req = urllib.request.Request(
            f"{base_url}/api/v1/tinsmith/status", headers={"X-API-Key": "tml-tests"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            workers = json.loads(resp.read())[0]["workers"]
        trainer = next(w for w in workers if w["kind"] == "trainer")
        sampler_worker = next(w for w in workers if w["kind"] == "sampler")
        assert trainer["node_resources"].get("tinsmith_trainer") == 1, trainer
        assert sampler_worker["node_resources"].get("tinsmith_sampler") == 1, sampler_worker
        assert "tinsmith_trainer" not in sampler_worker["node_resources"], sampler_worker
        assert trainer["node_id"] != sampler_worker["node_id"]
    finally:
        subprocess.run(
            [RAY, "job", "stop", "--address", dashboard, job_id],
            env=_ray_env(),
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(workdir, ignore_errors=True)
