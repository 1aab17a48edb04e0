"""The KubeRay manifests and the `ray up` config, checked without a Kubernetes cluster: against KubeRay v1.7.0's
CRD schemas (made strict, as kubeconform does), Ray Serve's and the launcher's own schemas, and against this
repository (the serve config, the CLI, the pinned versions, the environment that RuntimePaths reads)."""

import copy
import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from ray_app.cli import build_parser, load_config
from ray_app.config import RuntimePaths, WeightTarget
from tests.conftest import ROOT

KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMAS = Path(__file__).parent / "schemas" / "kuberay-v1.7.0.json.gz"  # provenance in schemas/README.md
MANIFESTS = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "RayService": "rayservice.yaml"}
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
IMAGES = {f"ray-app:{VERSION}-cpu", f"ray-app:{VERSION}-gpu"}


def strict(node):
    """The CRD schema with unknown fields refused wherever Kubernetes would prune them, and int-or-string
    nodes accepting both (what kubeconform's converter does)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        node.setdefault("additionalProperties", False)
    return node


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    with gzip.open(SCHEMAS) as fh:
        return jsonschema.Draft7Validator(strict(json.load(fh)[kind]))


def manifest(kind: str) -> dict:
    return yaml.safe_load((KUBERAY / MANIFESTS[kind]).read_text())


def cluster_spec(kind: str) -> dict:
    doc = manifest(kind)["spec"]
    return {"RayCluster": doc, "RayJob": doc.get("rayClusterSpec"), "RayService": doc.get("rayClusterConfig")}[kind]


def groups(kind: str) -> list[dict]:
    spec = cluster_spec(kind)
    return [{"groupName": "head", **spec["headGroupSpec"]}, *spec.get("workerGroupSpecs", [])]


def containers(kind: str) -> list[tuple[dict, dict]]:
    return [(group, c) for group in groups(kind) for c in group["template"]["spec"]["containers"]]


def errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_matches_the_kuberay_schema(kind):
    doc = manifest(kind)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert errors(crd_validator(kind), doc) == []


def test_strict_schema_refuses_misplaced_and_mistyped_fields():
    validator, doc = crd_validator("RayCluster"), manifest("RayCluster")
    misplaced = copy.deepcopy(doc)
    misplaced["spec"]["headGroupSpec"]["replicas"] = 1  # only worker groups have replicas
    typo = copy.deepcopy(doc)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    in_pod = copy.deepcopy(doc)
    in_pod["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    for broken, words in [(misplaced, "replicas"), (typo, "minReplica"), (wrong_type, "maxReplicas"),
                          (in_pod, "imagePullPolicy")]:
        found = errors(validator, broken)
        assert found and any(words in e for e in found), found


def test_rayservice_serves_the_ab_config_of_serve_deploy():
    served = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)  # Ray Serve's own schema for the opaque string
    local = yaml.safe_load((ROOT / "serve_configs" / "ab.yaml").read_text())
    assert served["applications"] == local["applications"], "serveConfigV2 and serve_configs/ab.yaml differ"
    assert served["http_options"]["host"] == "0.0.0.0"  # the serve service reaches the proxy on the pod's address
    for group, container in containers("RayService"):
        assert 8000 in {p["containerPort"] for p in container.get("ports", [])}, group["groupName"]


@pytest.mark.parametrize("kind", MANIFESTS)
def test_images_versions_and_resources_agree(kind):
    assert cluster_spec(kind)["rayVersion"] == ray.__version__
    for group, container in containers(kind):
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert container["image"] == f"ray-app:{VERSION}-{'gpu' if gpus else 'cpu'}", group["groupName"]
        # Ray takes a pod's CPUs, memory and GPUs from its limits: requests below them would overcommit the node
        assert container["resources"]["requests"] == container["resources"]["limits"], group["groupName"]
        if gpus:
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), group["groupName"]
    head = groups(kind)[0]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training or replicas on the head


def test_dockerfile_builds_what_pyproject_pins():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    bases = re.findall(r"rayproject/ray:([0-9.]+)-py3", dockerfile + (ROOT / "Makefile").read_text())
    assert len(bases) >= 3 and set(bases) == {ray.__version__}, bases  # CPU and GPU bases, in both files
    pins = (ROOT / "pyproject.toml").read_text()
    assert f"ray[train,tune,serve,data]=={ray.__version__}" in pins
    torch_pin = re.search(r'"(torch==[^"]+)"', pins).group(1)
    assert f'"{torch_pin}"' in dockerfile
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    for copied in ("tuning", "serve_configs", "ray_app"):
        assert re.search(rf"^COPY .*\b{copied} \./{copied}$", dockerfile, re.M), copied
    assert workdir == "/home/ray/app"


@pytest.mark.parametrize("kind", MANIFESTS)
def test_pods_resolve_shared_state_and_take_the_token_from_a_secret(kind, tmp_path):
    for group, container in containers(kind):
        env = {e["name"]: e for e in container.get("env", [])}
        assert "value" not in env.get("RAY_APP_ADMIN_TOKEN", {}), "the admin token must come from a Secret"
        paths = RuntimePaths.resolve({k: e["value"] for k, e in env.items() if "value" in e})
        assert paths.tracking_uri.startswith("http"), "every pod needs the same MLflow tracking server"
        assert paths.artifact_root is None  # the tracking server's artifact root, which every pod reaches
        if kind != "RayService":  # training writes checkpoints: they must outlive and be shared across pods
            assert "://" in paths.storage_path, group["groupName"]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert str(paths.home) in mounts, f"{group['groupName']}: RAY_APP_HOME is not on the shared volume"
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in group["template"]["spec"].get("volumes", [])}
        assert set(claims.values()) == {"ray-app-home"}
    pvc = yaml.safe_load((KUBERAY / "home-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_entrypoint_is_a_valid_pipeline_command():
    spec = manifest("RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "ray-app"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "pipeline"
    local_spec = ROOT / Path(args.spec).relative_to("/home/ray/app")  # the image's WORKDIR holds the repo's specs
    cfg = load_config(str(local_spec), args.overrides)
    assert cfg.train.use_gpu and any("gpu" in g["groupName"] for g in groups("RayJob"))
    assert spec["backoffLimit"] == 0 and spec["shutdownAfterJobFinishes"] is True


def test_launcher_config_matches_rays_schema_and_the_manifests():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "launcher" / "ray-up.yaml").read_text())
    jsonschema.validate(config, schema)
    images = {config["docker"]["image"]} | {t["docker"]["worker_image"] for t in config["available_node_types"].values()
                                            if "docker" in t}
    assert images == IMAGES
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # the Jobs API has no auth: reach it through `ray dashboard`
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    mounted = {Path(src).name for src in config["file_mounts"].values()}
    assert mounted == {"ray-app.env"} and (ROOT / "cluster" / "launcher" / "ray-app.env.example").exists()


def test_the_head_may_patch_only_the_rayservice_a_rollout_targets():
    docs = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "rollout-rbac.yaml").read_text())}
    account = docs["ServiceAccount"]["metadata"]["name"]
    service = manifest("RayService")["metadata"]["name"]
    assert WeightTarget().rayservice == service  # the rollout's default target is the shipped RayService
    assert docs["Role"]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayservices"],
                                      "resourceNames": [service], "verbs": ["get", "patch"]}]
    binding = docs["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    head = cluster_spec("RayCluster")["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == account  # where `pipeline --canary` jobs run the rollout
    assert "sha256sum --check" in (ROOT / "cluster" / "Dockerfile").read_text()  # kubectl, verified
