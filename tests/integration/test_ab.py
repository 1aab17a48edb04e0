"""A/B serving over real HTTP: two real registered models behind the ABRouter."""

import asyncio
import shutil
import subprocess
import threading
import time

import cloudpickle
import httpx
import pytest
import yaml
from ray import serve
from scipy import stats

from ray_app.registry import ModelRegistry
from ray_app.serve.app import ABArgs, VariantArgs, ab_app, variant_app
from ray_app.serve.router import ABRouter
from tests.conftest import BIN, ROOT, SERVE_PORT, wait_until
from tests.integration import ab_helpers

pytestmark = pytest.mark.timeout(600)
BASE = f"http://127.0.0.1:{SERVE_PORT}"


@pytest.fixture(scope="module")
def models(champion, paths):
    """The champion, and a second registered version of the same model aliased `challenger`."""
    registry = ModelRegistry(paths.tracking_uri, paths.artifact_root)
    bundle, _ = registry.load_bundle(champion.model.uri)
    run_id = registry.start_run("ab-test", "challenger-copy", {}, {})
    frame = bundle.dataset_version["files"][0]
    import pandas as pd

    rows = pd.read_parquet(frame).head(20)
    ref = registry.log_bundle(run_id, bundle, champion.model.name, rows[bundle.schema.features].head(5))
    registry.finish_run(run_id)
    registry.set_alias(ref.name, "challenger", ref.version)
    return {"champion": champion.model, "challenger": ref, "rows": rows[bundle.schema.features], "bundle": bundle}


def instance(models, i: int = 0) -> dict:
    return {"instances": [models["rows"].iloc[i % len(models["rows"])].to_dict()]}


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def ab_url(models, paths, feedback_dir):
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    args = ABArgs(experiment="t", tracking_uri=paths.tracking_uri, feedback_dir=str(feedback_dir),
                  feedback_flush_rows=1,
                  variants={"champion": "models:/ray-app-model@champion",
                            "challenger": "models:/ray-app-model@challenger"})
    app = ab_app(args, {"experiment": "t", "weights": {"champion": 90, "challenger": 10}})
    serve.run(app, name="ab-test", route_prefix="/abtest")
    yield f"{BASE}/abtest"
    serve.delete("ab-test")


async def _post_many(url: str, bodies: list[dict], headers: list[dict], concurrency: int = 16) -> list:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(body, header):
            async with semaphore:
                return await client.post(url, json=body, headers=header)

        return await asyncio.gather(*[one(b, h) for b, h in zip(bodies, headers, strict=True)])


def test_weighted_split_is_sticky_and_forceable(ab_url, models):
    n = 2000
    responses = asyncio.run(_post_many(ab_url, [instance(models, i) for i in range(n)],
                                       [{"x-user-id": f"user-{i}"} for i in range(n)]))
    assert all(r.status_code == 200 for r in responses)
    variants = [r.json()["variant"] for r in responses]
    observed = [variants.count("champion"), variants.count("challenger")]
    assert stats.chisquare(observed, [0.9 * n, 0.1 * n]).pvalue > 0.001, observed
    assert {r.json()["model"] for r in responses if r.json()["variant"] == "challenger"} == {
        models["challenger"].uri}

    again = asyncio.run(_post_many(ab_url, [instance(models)] * 40, [{"x-user-id": f"user-{i % 4}"}
                                                                    for i in range(40)]))
    for i in range(4):
        assert len({r.json()["variant"] for r in again[i::4]}) == 1
        assert again[i].json()["variant"] == variants[i]
    by_field = httpx.post(ab_url, json={**instance(models), "user_id": "user-7"}, timeout=30)
    assert by_field.json()["variant"] == variants[7]

    forced = httpx.post(ab_url, json=instance(models), headers={"x-variant": "challenger"}, timeout=30)
    assert forced.json()["variant"] == "challenger"
    bad = httpx.post(ab_url, json=instance(models), headers={"x-variant": "ghost"}, timeout=30)
    assert bad.status_code == 400 and "ghost" in bad.json()["error"]
    assert httpx.post(ab_url, content=b"{nope", timeout=30).status_code == 400
    assert httpx.post(ab_url, json={"instances": []}, timeout=30).status_code == 422
    assert httpx.post(ab_url, json=instance(models), timeout=30).status_code == 200


def test_explain_through_the_router_asks_the_assigned_variant(ab_url, models):
    features = models["bundle"].schema.features
    sticky = httpx.post(ab_url, json=instance(models), headers={"x-user-id": "user-3"}, timeout=30).json()
    explained = httpx.post(f"{ab_url}/explain", json=instance(models), headers={"x-user-id": "user-3"}, timeout=60)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["variant"] == sticky["variant"] and body["predictions"] == sticky["predictions"]
    assert [list(row) for row in body["attributions"]] == [features] and "request_id" not in body
    forced = httpx.post(f"{ab_url}/explain", json=instance(models), headers={"x-variant": "challenger"}, timeout=60)
    assert forced.json()["variant"] == "challenger" and forced.json()["model"] == models["challenger"].uri
    assert httpx.post(f"{ab_url}/explain", json={"instances": []}, timeout=30).status_code == 422


def test_feedback_labels_answers_and_stores_rows(ab_url, models, feedback_dir):
    import pandas as pd

    answer = httpx.post(ab_url, json=instance(models, 3), headers={"x-user-id": "fb-user"}, timeout=30).json()
    request_id = answer["request_id"]
    label = answer["predictions"][0]
    done = httpx.post(f"{ab_url}/feedback", json={"request_id": request_id, "labels": [label]}, timeout=30)
    assert done.status_code == 200 and done.json() == {"request_id": request_id, "variant": answer["variant"],
                                                        "labelled": 1}
    again = httpx.post(f"{ab_url}/feedback", json={"request_id": request_id, "labels": [label]}, timeout=30)
    assert again.status_code == 404
    assert httpx.post(f"{ab_url}/feedback", json={"labels": [1]}, timeout=30).status_code == 422
    named = httpx.post(ab_url, json={**instance(models), "request_id": "mine-1"}, timeout=30).json()
    assert named["request_id"] == "mine-1"
    assert httpx.post(f"{ab_url}/feedback", json={"request_id": "mine-1", "labels": [1, 0]},
                      timeout=30).status_code == 422
    stored = wait_until(lambda: list(feedback_dir.glob("feedback-*.parquet")), timeout=30, what="feedback rows")
    rows = pd.concat(pd.read_parquet(p) for p in stored)
    assert request_id in set(rows["request_id"])
    row = rows[rows["request_id"] == request_id].iloc[0]
    assert row["variant"] == answer["variant"] and row["x0"] == pytest.approx(models["rows"].iloc[3]["x0"])


def champion_and_misbehaving(bundle, tmp_path, other: str, mode: str) -> dict:
    """Two variants of one bundle folder: `champion` serves it, `other` fails or is slow (ab_helpers, shipped
    to the replicas by value)."""
    folder = bundle.save(tmp_path / "bundle")
    cloudpickle.register_pickle_by_value(ab_helpers)
    return {
        "champion": variant_app(VariantArgs(model_uri=str(folder), variant="champion"),
                                loader=lambda uri: (ab_helpers.ModelBundle.load(uri),
                                                    ab_helpers.ModelRef("local", "1", None))),
        other: variant_app(VariantArgs(model_uri=str(folder), variant=other),
                           loader=ab_helpers.MisbehavingLoader(mode)),
    }


@pytest.mark.parametrize("mode", ["fail", "slow"])
def test_shadow_answers_never_reach_or_slow_the_caller(models, tmp_path, mode):
    variants = champion_and_misbehaving(models["bundle"], tmp_path, "shadow", mode)
    app = ABRouter.options(user_config={"experiment": "s", "weights": {"champion": 1, "shadow": 0},
                                        "shadow": "shadow"}).bind(variants)
    serve.run(app, name=f"shadow-{mode}", route_prefix=f"/shadow-{mode}")
    try:
        url = f"{BASE}/shadow-{mode}"
        started = time.perf_counter()
        responses = [httpx.post(url, json=instance(models, i), timeout=30) for i in range(20)]
        elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 and r.json()["variant"] == "champion" for r in responses)
        assert elapsed < 20 * 2.0 / 2, f"20 requests took {elapsed:.1f}s: the caller waited for the shadow"
    finally:
        serve.delete(f"shadow-{mode}")


def _deploy(config: dict, path, ray_cluster) -> None:
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([str(BIN / "serve"), "deploy", "--address", ray_cluster["dashboard"], str(path)],
                          env=ray_cluster["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_weight_change_through_serve_deploy_drops_no_request(models, ray_cluster, tmp_path):
    config = yaml.safe_load((ROOT / "serve_configs" / "ab.yaml").read_text())
    _deploy(config, tmp_path / "ab.yaml", ray_cluster)
    url = f"{BASE}/predict"
    wait_until(lambda: _ok(url, models), timeout=180, what="the ab app")
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                try:
                    r = client.post(url, json=instance(models, i), headers={"x-user-id": f"u{i}"})
                    outcomes.append((r.status_code, r.json().get("variant", "")))
                except httpx.HTTPError as exc:
                    outcomes.append((0, type(exc).__name__))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        config["applications"][0]["deployments"][0]["user_config"]["weights"] = {"champion": 50, "challenger": 50}
        _deploy(config, tmp_path / "ab-50.yaml", ray_cluster)
        wait_until(lambda: _recent_share(outcomes, "challenger") > 0.35, timeout=120, what="the new weights")
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        serve.delete("ab")
    failures = [o for o in outcomes if o[0] != 200]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
    assert len(outcomes) > 100
    shutil.rmtree(tmp_path, ignore_errors=True)


def _ok(url: str, models) -> bool:
    try:
        return httpx.post(url, json=instance(models), timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _recent_share(outcomes: list, variant: str, window: int = 100) -> float:
    recent = outcomes[-window:]
    return sum(v == variant for _, v in recent) / max(len(recent), 1)
