"""Canary rollouts against a live ABRouter, analysed in a real Prometheus scraping this Ray cluster."""

import random

import httpx
import pandas as pd
import pytest
import yaml
from ray import serve

from ray_app.incidents import read_audit
from ray_app.registry import ModelRegistry
from ray_app.rollout import RolloutController
from ray_app.serve.router import ABRouter
from tests.conftest import ADMIN_TOKEN, FAST_METRICS, ROOT, SERVE_PORT, LoadThreads, small_config, wait_until
from tests.integration.test_ab import _deploy, _ok, champion_and_misbehaving

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
MODEL = "rollout-model"
BASE = f"http://127.0.0.1:{SERVE_PORT}"


@pytest.fixture(scope="module")
def versions(champion, paths):
    """Two registered versions of `rollout-model` (copies of the session champion): champion and challenger."""
    registry = ModelRegistry(paths.tracking_uri, paths.artifact_root)
    bundle, _ = registry.load_bundle(champion.model.uri)
    data = pd.read_parquet(bundle.dataset_version["files"][0]).head(200)
    refs = []
    for alias in ("champion", "challenger"):
        run_id = registry.start_run("rollout-test", alias, {}, {})
        refs.append(registry.log_bundle(run_id, bundle, MODEL, data[bundle.schema.features].head(5)))
        registry.finish_run(run_id)
        registry.set_alias(MODEL, alias, refs[-1].version)
    return {"champion": refs[0], "challenger": refs[1], "bundle": bundle,
            "rows": data[bundle.schema.features], "labels": data[bundle.schema.label].tolist()}


class Traffic(LoadThreads):
    """Steady load from background threads: random users, and the true label posted back for each answer."""

    def __init__(self, url: str, versions: dict, threads: int = 2):
        super().__init__(threads)
        self.url, self.versions = url, versions
        self.outcomes: list[tuple[int, str]] = []

    def _run(self, n: int) -> None:
        rows, labels, rng = self.versions["rows"], self.versions["labels"], random.Random(n)
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                i = rng.randrange(len(rows))
                try:
                    r = client.post(self.url, json={"instances": [rows.iloc[i].to_dict()]},
                                    headers={"x-user-id": f"user-{rng.random()}"})
                    self.outcomes.append((r.status_code, r.json().get("variant", "")))
                    if r.status_code == 200:
                        client.post(f"{self.url}/feedback", json={"request_id": r.json()["request_id"],
                                                                  "labels": [labels[i]]})
                except httpx.HTTPError as exc:
                    self.outcomes.append((0, type(exc).__name__))



def rollout_config(experiment: str, prometheus: str, **target):
    return small_config(registry={"model_name": MODEL}, rollout={
        "experiment": experiment, "steps": [30, 100], "step_wait_s": 6, "settle_s": 3, "max_extensions": 3,
        "prometheus_url": prometheus, "target": target,
        "thresholds": {"min_requests": 15, "min_labels": 10, "p99_slack_ms": 250, "max_accuracy_drop": 0.2},
    })


def test_healthy_canary_is_promoted_through_serve_deploy(versions, ray_cluster, prometheus, paths, tmp_path):
    config = yaml.safe_load((ROOT / "serve_configs" / "ab.yaml").read_text())
    app = config["applications"][0]
    app["name"], app["route_prefix"] = "rollout", "/rollout"
    app["runtime_env"] = {"env_vars": FAST_METRICS}  # Serve merges an app's env_vars into each deployment's
    app["args"].update(experiment="canary-ok", variants={a: f"models:/{MODEL}@{a}" for a in ("champion", "challenger")})
    app["deployments"][0]["user_config"].update(experiment="canary-ok", weights={"champion": 100, "challenger": 0})
    _deploy(config, tmp_path / "rollout.yaml", ray_cluster)
    url = f"{BASE}/rollout"
    wait_until(lambda: _ok(url, versions), timeout=180, what="the rollout app")
    cfg = rollout_config("canary-ok", prometheus, via="serve", app="rollout")
    try:
        with Traffic(url, versions) as traffic:
            outcome = RolloutController(cfg, paths).run()
            served = len(traffic.outcomes)
    finally:
        serve.delete("rollout")
    assert outcome.decision == "promoted", outcome
    assert [s["percent"] for s in outcome.steps] == [30, 100]
    assert outcome.steps[0]["challenger"]["requests"] >= 15 and outcome.steps[0]["champion"]["labels"] >= 10
    assert all(status == 200 for status, _ in traffic.outcomes[:served]), "a request failed during the rollout"
    registry = ModelRegistry(paths.tracking_uri)
    assert registry.alias_version(MODEL, "champion") == versions["challenger"].version
    assert registry.alias_version(MODEL, "previous") == versions["champion"].version
    record = read_audit(paths.audit_log)[-1]
    assert record["action"] == "rollout-promote" and record["decision"] is True
    assert record["version"] == versions["challenger"].version and len(record["steps"]) == 2


def test_failing_canary_is_rolled_back_through_the_admin_route(versions, prometheus, paths, tmp_path):
    registry = ModelRegistry(paths.tracking_uri)
    registry.set_alias(MODEL, "challenger", versions["champion"].version)  # a promotion may have used it up
    champion_before = registry.alias_version(MODEL, "champion")
    variants = champion_and_misbehaving(versions["bundle"], tmp_path, "challenger", "fail")
    router = ABRouter.options(user_config={"experiment": "canary-bad", "weights": {"champion": 1, "challenger": 0}},
                              ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": FAST_METRICS}})
    serve.run(router.bind(variants), name="canary-bad", route_prefix="/canary-bad")
    url, admin = f"{BASE}/canary-bad", f"{BASE}/canary-bad/admin/weights"
    try:
        assert httpx.get(admin, timeout=10).status_code == 401
        assert httpx.get(admin, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        refused = httpx.post(admin, json={"weights": {"champion": 1, "nobody": 1}}, headers=auth, timeout=10)
        assert refused.status_code == 422 and "nobody" in refused.json()["error"]
        cfg = rollout_config("canary-bad", prometheus, via="admin", admin_url=admin)
        with Traffic(url, versions):
            outcome = RolloutController(cfg, paths).run()
        weights = httpx.get(admin, headers=auth, timeout=10).json()["weights"]
        crashed = httpx.post(url, json={"instances": [versions["rows"].iloc[0].to_dict()]},
                             headers={"x-variant": "challenger"}, timeout=30)
    finally:
        serve.delete("canary-bad")
    assert outcome.decision == "rolled_back", outcome
    assert len(outcome.steps) == 1 and "error rate" in outcome.reason
    assert weights == {"champion": 100, "challenger": 0}
    assert crashed.status_code == 500 and "challenger failed" in crashed.json()["error"]
    assert registry.alias_version(MODEL, "champion") == champion_before
    record = read_audit(paths.audit_log)[-1]
    assert record["action"] == "rollout-rollback" and record["decision"] is False
    assert "error rate" in record["reason"] and record["steps"][0]["challenger"]["error_rate"] > 0.02

