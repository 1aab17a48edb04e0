"""The retrain webhook's decisions: once per (fingerprint, startsAt), never while a retrain runs, only for
firing alerts labelled action=retrain. Ray's Jobs API is stood in by a recorder here; tests/e2e uses the real one."""

import pytest

from ray_app.config import RuntimePaths
from ray_app.loop import RetrainWebhook


class RecordedJobs:
    def __init__(self):
        self.submitted: list[tuple[str, dict]] = []
        self.state = "RUNNING"

    def submit(self, entrypoint: str, metadata: dict) -> str:
        self.submitted.append((entrypoint, metadata))
        return f"job-{len(self.submitted)}"

    def status(self, job_id: str) -> str:
        return self.state


def alert(fingerprint="f1", starts="2026-11-26T10:00:00Z", status="firing", action="retrain") -> dict:
    return {"status": status, "fingerprint": fingerprint, "startsAt": starts,
            "labels": {"alertname": "FeatureDriftPersistent", "action": action, "feature": "x0"}}


@pytest.fixture
def webhook(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    return RetrainWebhook(paths, spec="tuning/default.yaml", jobs=RecordedJobs())


def test_an_alert_submits_once_and_resends_are_ignored(webhook, tmp_path):
    status, body = webhook.handle({"alerts": [alert()]})
    assert status == 202 and body["job_id"] == "job-1"
    entrypoint, metadata = webhook.jobs.submitted[0]
    assert entrypoint.startswith("ray-app pipeline --canary --set data.feedback=")
    assert entrypoint.endswith("--spec tuning/default.yaml")
    assert metadata["trigger"] == "alertmanager"
    assert webhook.handle({"alerts": [alert()]}) == (200, {"status": "nothing new", "alerts": 1})
    again = RetrainWebhook(webhook.paths, jobs=webhook.jobs)  # a restarted webhook remembers what it acted on
    assert again.handle({"alerts": [alert()]})[0] == 200 and len(webhook.jobs.submitted) == 1


def test_no_second_job_while_one_runs_then_a_new_alert_retrains(webhook):
    webhook.handle({"alerts": [alert()]})
    status, body = webhook.handle({"alerts": [alert("f2")]})
    assert status == 409 and body["job_id"] == "job-1"
    webhook.jobs.state = "SUCCEEDED"
    assert webhook.handle({"alerts": [alert("f2")]})[0] == 202  # refused alerts were not marked as seen
    assert len(webhook.jobs.submitted) == 2


@pytest.mark.parametrize("payload", [
    {"alerts": [alert(status="resolved")]},
    {"alerts": [alert(action="page")]},
    {"alerts": []},
])
def test_resolved_and_other_alerts_submit_nothing(webhook, payload):
    assert webhook.handle(payload)[0] == 200 and webhook.jobs.submitted == []


@pytest.mark.parametrize("payload", [[], {"alerts": "x"}, "text", None])
def test_malformed_payloads_get_422(webhook, payload):
    assert webhook.handle(payload)[0] == 422


def test_http_routes_need_the_token_and_reach_the_rollout_control(webhook):
    from starlette.testclient import TestClient

    from ray_app.loop import webhook_app

    actions = []
    client = TestClient(webhook_app(webhook, "s3cret", lambda action, reason: actions.append((action, reason))
                                    or {"decision": action}))
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/alerts", json={"alerts": [alert()]}).status_code == 401
    assert client.post("/rollout/abort", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/alerts", content=b"{not json", headers=auth).status_code == 400
    assert client.post("/alerts", json={"alerts": [alert()]}, headers=auth).status_code == 202
    answer = client.post("/rollout/abort", json={"reason": "p99 regressed"}, headers=auth)
    assert answer.status_code == 200 and answer.json() == {"decision": "abort"}
    assert actions == [("abort", "p99 regressed")]
    assert client.post("/rollout/restart", headers=auth).status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
