"""A training stage that cannot get its CPUs says so and exits 2 within its wait; with room, it trains. And the
README's sequence on a running cluster: the A/B app deployed, then a training job submitted with `ray job submit`,
which finishes beside it."""

import subprocess
import time

import pytest
import ray
import yaml
from ray import serve

from ray_app.registry import ModelRegistry
from ray_app.serve.app import VariantArgs, variant_app
from tests.conftest import BIN, ROOT, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SMALL = ["--set", "data.synthetic={rows: 1200, drift: 0.0}", "--set", "train.epochs=1"]


def _train(env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray-app"), "train", *SMALL, *extra], env=env, capture_output=True, text=True,
                          timeout=400)


def test_train_beside_replicas_holding_the_cpus_exits_2_naming_the_app_then_trains(champion, ray_cluster, paths):
    total = ray.cluster_resources()["CPU"]
    hog = VariantArgs(model_uri=champion.model.uri, tracking_uri=paths.tracking_uri, variant="hog", num_replicas=2,
                      num_cpus=round((total - 1.5) / 2, 2))  # leaves 1.5 CPU: one worker + Data need 2
    serve.run(variant_app(hog), name="hog", route_prefix="/hog")
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    try:
        started = time.monotonic()
        refused = _train(env, "--set", "train.num_workers=1", "--wait-for-resources", "8")
        elapsed = time.monotonic() - started
    finally:
        serve.delete("hog")
    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: waited 8 s: training (1 worker x 1 CPU + 1 CPU for Ray Data) needs 2 CPU"), last
    assert "Serve app `hog`" in last and "`serve delete hog`" in last, last
    assert "Traceback" not in refused.stderr and elapsed < 120
    trained = _train(env, "--set", "train.num_workers=1", "--wait-for-resources", "60")
    assert trained.returncode == 0, trained.stderr[-3000:]


def test_a_training_job_finishes_beside_the_ab_app(champion, ray_cluster, paths, tmp_path):
    registry = ModelRegistry(paths.tracking_uri)
    registry.set_alias(champion.model.name, "challenger", champion.model.version)
    config = yaml.safe_load((ROOT / "serve_configs" / "ab.yaml").read_text())
    config["applications"][0]["route_prefix"] = "/ab-beside"
    (tmp_path / "ab.yaml").write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", "--address", ray_cluster["dashboard"],
                             str(tmp_path / "ab.yaml")], env=ray_cluster["env"], capture_output=True, text=True,
                            timeout=120)
    assert deploy.returncode == 0, deploy.stderr
    try:
        wait_until(lambda: serve.status().applications.get("ab") and
                   serve.status().applications["ab"].status == "RUNNING", timeout=240, what="the A/B app")
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
             "--", "ray-app", "train", *SMALL, "--wait-for-resources", "120"],
            env=ray_cluster["env"], capture_output=True, text=True, timeout=500)
        assert serve.status().applications["ab"].status == "RUNNING"
    finally:
        serve.delete("ab")
        ModelRegistry(paths.tracking_uri).client.delete_registered_model_alias(champion.model.name, "challenger")
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "[ray] running on the Ray cluster at" in job.stdout + job.stderr
    assert '"model_uri": "models:/' in job.stdout
