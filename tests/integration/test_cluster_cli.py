"""The stages as a user drives them against `ray start --head`: `serve deploy` and `ray job submit`."""

import json
import subprocess

import httpx
import pytest
from ray import serve

from tests.conftest import BIN, ROOT, SERVE_PORT, wait_until

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
