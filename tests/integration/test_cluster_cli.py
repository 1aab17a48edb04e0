"""The stages as a user drives them against `ray start --head`: `serve deploy` and `ray job submit`."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.conftest import BIN, ROOT, SERVE_PORT, free_port, wait_until

pytestmark = pytest.mark.timeout(400)


def _post_ok(url: str, body: dict) -> bool:
    try:
        return httpx.post(url, json=body, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_deploy_single_yaml_serves(champion, ray_cluster):
    deploy = subprocess.run([str(BIN / "serve"), "deploy", "--address", ray_cluster["dashboard"],
                             str(ROOT / "serve_configs" / "single.yaml")],
                            env=ray_cluster["env"], capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stderr
    try:
        schema = wait_until(lambda: _get_json(f"http://127.0.0.1:{SERVE_PORT}/schema"), timeout=180,
                            what="the deployed app")
        row = {name: 0.1 for name in schema["schema"]["numeric"]}
        row.update({name: values[0] for name, values in schema["schema"]["categorical"].items()})
        url = f"http://127.0.0.1:{SERVE_PORT}/predict"
        assert wait_until(lambda: _post_ok(url, {"instances": [row]}), timeout=60, what="a prediction")
        body = httpx.post(url, json={"instances": [row]}, timeout=10).json()
        assert body["variant"] == "champion" and body["model"] == champion.model.uri
    finally:
        serve.delete("model")


def test_readme_serving_section_on_a_running_cluster(champion, ray_cluster, paths):
    """README, "Serving": on a cluster that `ray start` runs, `ray-app train --alias champion` joins it by itself
    (no RAY_ADDRESS: the CLI once passed num_cpus to that join and crashed), then `serve deploy
    serve_configs/single.yaml` serves the new champion."""
    from ray_app.registry import ModelRegistry

    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    small = ["--set", "data.synthetic={rows: 1500, drift: 0.0}", "--set", "train.num_workers=1",
             "--set", "train.epochs=2"]
    registry = ModelRegistry(paths.tracking_uri)
    try:
        trained = subprocess.run([str(BIN / "ray-app"), "train", "--alias", "champion", *small], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
        # `ray start` records the node's own address (not 127.0.0.1) for the cluster: match on the port
        joined = re.search(r"\[ray\] running on the Ray cluster at \S+:(\d+) \(a local cluster started by",
                           trained.stderr)
        assert joined and int(joined.group(1)) == ray_cluster["port"], trained.stderr[-3000:]
        version = registry.alias_version(champion.model.name, "champion")
        assert version != champion.model.version
        deploy = subprocess.run([str(BIN / "serve"), "deploy", "--address", ray_cluster["dashboard"],
                                 str(ROOT / "serve_configs" / "single.yaml")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stderr
        expected = f"models:/{champion.model.name}/{version}"
        schema = wait_until(lambda: (s := _get_json(f"http://127.0.0.1:{SERVE_PORT}/schema")) and
                            s["model"] == expected and s, timeout=180, what="the new champion deployed")
        row = {name: 0.1 for name in schema["schema"]["numeric"]}
        row.update({name: values[0] for name, values in schema["schema"]["categorical"].items()})
        answer = httpx.post(f"http://127.0.0.1:{SERVE_PORT}/predict", json={"instances": [row]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == expected, answer.text
    finally:
        registry.set_alias(champion.model.name, "champion", champion.model.version)  # other tests serve it
        serve.delete("model")


def test_a_stage_with_local_runs_on_a_private_ray_next_to_the_cluster(ray_cluster, tmp_path):
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    env["RAY_APP_HOME"] = str(tmp_path)
    done = subprocess.run([str(BIN / "ray-app"), "ingest", "--local", "--set", "data.source=breast_cancer"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[ray] running on a private local Ray on 127.0.0.1" in done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["dataset_version"]["num_rows"] == 569 and sum(report["splits"].values()) == 569
    cleared = subprocess.run([str(BIN / "ray-app"), "ingest", "--clear-cache"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert cleared.returncode == 0 and "removed 1 version(s)" in cleared.stdout, cleared.stdout + cleared.stderr
    assert not Path(report["split_cache"]).exists()


def test_ray_app_serve_behind_the_haproxy_ingress(champion, ray_cluster, tmp_path):
    """README, "Serving": `ray-app serve --ingress haproxy` on a private Ray answers through Ray's HAProxy
    ingress (its stats page on 8404 is up) from the moment it says it is serving, and Ctrl-C takes it all down."""
    import psutil

    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    port, log, started = free_port(), tmp_path / "serve.log", time.time()
    proc = subprocess.Popen([str(BIN / "ray-app"), "serve", "--local", "--ingress", "haproxy", "--port", str(port),
                             "--model-uri", f"models:/{champion.model.name}@champion"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is None and "serving models:/" in log.read_text(), interval=0.05,
                   timeout=300, what=f"ray-app serve --ingress haproxy to say it serves ({log})")
        # asked at once: HAProxy answers 404 for a route until Serve has handed it over, which must be done by then
        first = httpx.get(f"http://127.0.0.1:{port}/schema", timeout=30)
        assert first.status_code == 200, first.text
        schema = first.json()
        row = {name: 0.1 for name in schema["schema"]["numeric"]}
        row.update({name: values[0] for name, values in schema["schema"]["categorical"].items()})
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"instances": [row]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == champion.model.uri, answer.text
        assert httpx.get("http://127.0.0.1:8404/stats", timeout=10).status_code == 200  # HAProxy's own page
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    def haproxy_left() -> list[int]:
        return [p.pid for p in psutil.process_iter(["name", "create_time"])
                if p.info["name"] == "haproxy" and p.info["create_time"] >= started]

    wait_until(lambda: not haproxy_left(), timeout=20, what="no HAProxy left running after Ctrl-C")


def _get_json(url: str):
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_stage_runs_as_a_ray_job(ray_cluster):
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
         "--", "ray-app", "ingest", "--set", "data.source=breast_cancer"],
        env=ray_cluster["env"], capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    start = submit.stdout.index('{\n  "dataset_version"')
    decoder = json.JSONDecoder()
    report, _ = decoder.raw_decode(submit.stdout[start:])
    assert report["dataset_version"]["num_rows"] == 569
    assert sum(report["splits"].values()) == 569
