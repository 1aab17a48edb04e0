"""The whole loop on loopback: served traffic drifts, the DriftMonitor exports it, a real Prometheus alerts, a real
Alertmanager calls the webhook, and the webhook submits one retraining job to the Ray Jobs API.

Windows are 2 s and the alert's `for` is 4 s here (the shipped rules say 10m for 300 s windows): the rules
themselves are the shipped ones with their durations scaled.
"""

import json
import shutil
import threading
import time

import httpx
import pandas as pd
import pytest
from ray import serve

from ray_app.config import MonitorConfig
from ray_app.incidents import read_audit
from ray_app.loop import RayJobs, RetrainWebhook
from ray_app.monitor.exporter import EXPORTED
from ray_app.monitor.service import DriftMonitor
from ray_app.serve.app import VariantArgs, variant_app
from tests.conftest import FAST_METRICS, SERVE_PORT, wait_until
from tests.e2e.stack import alert_stack, drift_alerts

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture
def alerting(ray_cluster, paths, tmp_path):
    webhook = RetrainWebhook(paths, jobs=RayJobs(ray_cluster["dashboard"]), folder=tmp_path / "webhook")
    with alert_stack(ray_cluster, tmp_path, webhook) as stack:
        yield {**stack, "webhook": webhook}


def test_injected_drift_reaches_the_webhook_once_and_submits_one_retraining_job(champion, alerting, paths, tmp_path):
    started_ms = time.time() * 1000  # jobs of earlier tests in the session (the closed loop's) are not this one's
    settings = MonitorConfig(window_s=2, flush_rows=25, flush_s=0.25, min_rows=50)
    args = VariantArgs(model_uri=champion.model.uri, tracking_uri=paths.tracking_uri, variant="live",
                       monitor=settings)
    monitor = DriftMonitor.options(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": FAST_METRICS}})
    serve.run(variant_app(args, monitor=monitor.bind(str(tmp_path / "monitor"), settings)), name="loop",
              route_prefix="/loop")
    url = f"http://127.0.0.1:{SERVE_PORT}/loop"
    from ray_app.registry import ModelRegistry

    bundle, _ = ModelRegistry(paths.tracking_uri).load_bundle(champion.model.uri)
    data = pd.read_parquet(bundle.dataset_version["files"][0])[bundle.schema.features]
    shifted = data.assign(x0=data["x0"] + 3 * data["x0"].std())
    jobs, stop, phase = RayJobs(paths.dashboard_url), threading.Event(), {"frame": data}
    failed: list = []
    firing: set[str] = set()

    def traffic() -> None:
        """Batches of 20 rows until stopped; a request that fails is counted, and the traffic goes on (a sender
        that died on one timeout would end the windows, and the alert with them)."""
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                chunk = phase["frame"].iloc[(i * 20) % 2000:(i * 20) % 2000 + 20]
                try:
                    answer = client.post(url, json={"instances": chunk.to_dict(orient="records")})
                    if answer.status_code != 200:
                        failed.append(answer.status_code)
                except httpx.HTTPError as exc:
                    failed.append(repr(exc))
                i += 1

    def fired() -> set[str]:
        """Every feature seen firing so far, polled: how long an alert stays firing is not under test."""
        firing.update(a["labels"]["feature"] for a in drift_alerts(alerting["prometheus"], "firing"))
        return firing

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(10)  # five stationary windows: no alert, no job
        early = drift_alerts(alerting["prometheus"], "firing") + drift_alerts(alerting["prometheus"], "pending")
        assert not early and alerting["calls"] == [], early
        phase["frame"] = shifted
        last_job = alerting["webhook"].last_job_file

        def submitted_yet() -> bool:
            fired()
            return last_job.exists()

        wait_until(submitted_yet, 120, what="a retraining job")
        # The retrain itself is not under test here: stop it before it loads the machine (and slows the traffic
        # whose windows keep the alert firing).
        job_id = json.loads(last_job.read_text())["job_id"]
        jobs.client.stop_job(job_id)
        deadline = time.monotonic() + 8  # Alertmanager re-sends the firing group every few seconds meanwhile
        while time.monotonic() < deadline:
            fired()
            time.sleep(0.5)
        names = set(httpx.get(f"{alerting['prometheus']}/api/v1/label/__name__/values", timeout=10).json()["data"])
    finally:
        stop.set()
        sender.join(timeout=60)
        serve.delete("loop")
    submitted = [j for j in jobs.client.list_jobs()
                 if (j.metadata or {}).get("trigger") == "alertmanager" and (j.start_time or 0) >= started_ms]
    for job in submitted:
        jobs.client.stop_job(job.submission_id)
        wait_until(lambda job=job: jobs.status(job.submission_id) not in ("PENDING", "RUNNING"), 120,
                   what="the retraining job to stop")
    assert len(submitted) == 1, submitted
    assert submitted[0].submission_id == job_id
    assert "pipeline --canary" in submitted[0].entrypoint and "data.feedback=" in submitted[0].entrypoint
    assert len(alerting["calls"]) >= 2, "Alertmanager should have re-sent the group at least once"
    assert not failed, failed[:5]
    assert "x0" in firing, firing
    assert firing <= {"x0", "prediction"}  # the other features never drifted
    acted_on = {a["labels"].get("feature") for r in read_audit(paths.audit_log)
                if r.get("job_id") == job_id and r["action"] in ("alert", "alert-joined") for a in r["alerts"]}
    assert "x0" in acted_on and acted_on <= {"x0", "prediction"}, acted_on  # what reached the webhook
    assert set(EXPORTED) <= names and "ray_ab_requests_total" not in EXPORTED
    shutil.rmtree(tmp_path / "monitor", ignore_errors=True)
