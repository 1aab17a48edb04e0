"""Setting a router's weights in a KubeRay RayService: `kubectl` is a stand-in here (no Kubernetes), holding the
shipped cluster/kuberay/rayservice.yaml and applying merge patches with Kubernetes' resourceVersion check."""

import json
import sys

import pytest
import yaml

from ray_app.config import ExperimentConfig, RuntimePaths
from ray_app.serve.weights import RayServiceWeights, weight_setter
from tests.conftest import ROOT

FAKE_KUBECTL = f"""#!{sys.executable}
import json, pathlib, sys
state = pathlib.Path(__file__).with_name("rayservice.json")
args = sys.argv[1:]
with state.with_name("calls.jsonl").open("a") as log:
    log.write(json.dumps(args) + "\\n")
if "--namespace" in args:
    i = args.index("--namespace"); args = args[:i] + args[i + 2:]
resource = json.loads(state.read_text())
if args[:2] != ["get", "rayservice"] and args[:2] != ["patch", "rayservice"] or args[2] != resource["metadata"]["name"]:
    sys.exit(f"Error from server (NotFound): {{args}}")
if args[0] == "get":
    print(json.dumps(resource))
else:
    patch = json.loads(args[args.index("--patch") + 1])
    if patch["metadata"]["resourceVersion"] != resource["metadata"]["resourceVersion"]:
        sys.exit("Error from server (Conflict): the object has been modified")
    resource["spec"].update(patch["spec"])
    resource["metadata"]["resourceVersion"] = str(int(resource["metadata"]["resourceVersion"]) + 1)
    state.write_text(json.dumps(resource))
"""


@pytest.fixture
def kubectl(tmp_path):
    resource = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    resource["metadata"]["resourceVersion"] = "7"
    (tmp_path / "rayservice.json").write_text(json.dumps(resource))
    script = tmp_path / "kubectl"
    script.write_text(FAKE_KUBECTL)
    script.chmod(0o755)
    return tmp_path


def stored(folder) -> tuple[dict, dict]:
    resource = json.loads((folder / "rayservice.json").read_text())
    return resource, yaml.safe_load(resource["spec"]["serveConfigV2"])


def test_weights_land_in_the_rayservice_and_nothing_else_changes(kubectl):
    _, before = stored(kubectl)
    RayServiceWeights("ray-app", "serving", "ab", "ABRouter", kubectl=str(kubectl / "kubectl"))(
        {"champion": 75, "challenger": 25})
    resource, after = stored(kubectl)
    router = after["applications"][0]["deployments"][0]
    assert router["user_config"]["weights"] == {"champion": 75, "challenger": 25}
    router["user_config"]["weights"] = before["applications"][0]["deployments"][0]["user_config"]["weights"]
    assert after == before  # experiment, headers, args, http options: untouched
    assert resource["metadata"]["resourceVersion"] == "8"
    calls = [json.loads(line) for line in (kubectl / "calls.jsonl").read_text().splitlines()]
    assert [c[:4] for c in calls] == [["--namespace", "serving", "get", "rayservice"]] + [
        ["--namespace", "serving", "patch", "rayservice"]]


def test_a_concurrent_change_or_a_missing_app_is_an_error_not_an_overwrite(kubectl):
    fake = str(kubectl / "kubectl")
    real = kubectl / "rayservice.json"
    resource = json.loads(real.read_text())

    class Racing(RayServiceWeights):
        def _kubectl(self, *args):
            out = super()._kubectl(*args)
            if args[0] == "get":  # someone applies the file again between our get and our patch
                real.write_text(json.dumps({**resource, "metadata": {**resource["metadata"], "resourceVersion": "9"}}))
            return out

    with pytest.raises(RuntimeError, match="Conflict"):
        Racing("ray-app", None, "ab", "ABRouter", kubectl=fake)({"champion": 0, "challenger": 100})
    assert stored(kubectl)[1]["applications"][0]["deployments"][0]["user_config"]["weights"] == {
        "champion": 90, "challenger": 10}
    with pytest.raises(RuntimeError, match="no Serve application 'shadow'"):
        RayServiceWeights("ray-app", None, "shadow", "ABRouter", kubectl=fake)({"champion": 100})
    with pytest.raises(RuntimeError, match="NotFound"):
        RayServiceWeights("other", None, "ab", "ABRouter", kubectl=fake)({"champion": 100})


def test_the_rollout_spec_picks_the_rayservice_target(tmp_path):
    cfg = ExperimentConfig().with_overrides(rollout={"target": {"via": "rayservice", "rayservice": "ray-app",
                                                                "namespace": "serving"}})
    setter = weight_setter(cfg.rollout, RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)}))
    assert isinstance(setter, RayServiceWeights) and setter.name == "ray-app" and "serving" in setter.base
