"""The retrain webhook's decisions: once per (fingerprint, startsAt), never while a retrain runs, only for
firing alerts labelled action=retrain. Ray's Jobs API is stood in by a recorder here; tests/e2e uses the real one."""

import time

import pytest

from ray_app.config import RuntimePaths
from ray_app.incidents import read_audit
from ray_app.loop import RetrainWebhook


class RecordedJobs:
    def __init__(self):
        self.submitted: list[tuple[str, dict]] = []
        self.state = "RUNNING"
        self.ended = time.time() - 7200

    def submit(self, entrypoint: str, metadata: dict, submission_id: str | None = None) -> str:
        self.submitted.append((entrypoint, metadata))
        return submission_id or f"job-{len(self.submitted)}"

    def status(self, job_id: str) -> str:
        return self.state

    def ended_at(self, job_id: str) -> float | None:
        return None if self.state in ("PENDING", "RUNNING") else self.ended


def alert(fingerprint="f1", starts="2026-11-26T10:00:00Z", status="firing", action="retrain") -> dict:
    return {"status": status, "fingerprint": fingerprint, "startsAt": starts,
            "labels": {"alertname": "FeatureDriftPersistent", "action": action, "feature": "x0"}}


@pytest.fixture
def webhook(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    return RetrainWebhook(paths, spec="tuning/default.yaml", jobs=RecordedJobs())


def test_an_alert_submits_once_and_resends_are_ignored(webhook, tmp_path):
    status, body = webhook.handle({"alerts": [alert()]})
    incident = body["incident"]
    assert status == 202 and incident.startswith("inc-") and incident.endswith("-f1")
    assert body["job_id"] == f"retrain-{incident}"
    entrypoint, metadata = webhook.jobs.submitted[0]
    assert entrypoint.startswith(f"ray-app pipeline --canary --incident {incident} --set data.feedback=")
    assert entrypoint.endswith("--spec tuning/default.yaml")
    assert metadata["trigger"] == "alertmanager" and metadata["incident"] == incident
    [opened] = read_audit(webhook.paths.audit_log)
    assert opened["action"] == "alert" and opened["incident"] == incident and opened["job_id"] == body["job_id"]
    assert opened["starts_at"] == "2026-11-26T10:00:00Z" and opened["trigger"] == "FeatureDriftPersistent(x0)"
    assert webhook.handle({"alerts": [alert()]}) == (200, {"status": "nothing new", "alerts": 1})
    again = RetrainWebhook(webhook.paths, jobs=webhook.jobs)  # a restarted webhook remembers what it acted on
    assert again.handle({"alerts": [alert()]})[0] == 200 and len(webhook.jobs.submitted) == 1


def test_alerts_while_a_retrain_runs_join_it_and_a_later_alert_retrains(webhook):
    first = webhook.handle({"alerts": [alert()]})[1]
    status, body = webhook.handle({"alerts": [alert("f2")]})  # another feature of the same drift
    assert status == 200 and body["status"] == "joined the running retrain"
    assert body["job_id"] == first["job_id"] and body["incident"] == first["incident"]
    webhook.jobs.state = "SUCCEEDED"
    assert webhook.handle({"alerts": [alert("f2")]}) == (200, {"status": "nothing new", "alerts": 1})
    assert len(webhook.jobs.submitted) == 1
    joined = [r for r in read_audit(webhook.paths.audit_log) if r["action"] == "alert-joined"]
    assert [r["incident"] for r in joined] == [first["incident"]]
    status, body = webhook.handle({"alerts": [alert("f2", starts="2026-11-26T11:00:00Z")]})  # it fired again
    assert status == 202 and body["incident"] != first["incident"] and len(webhook.jobs.submitted) == 2


def test_after_a_retrain_ends_new_alerts_wait_for_the_cooldown(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    webhook = RetrainWebhook(paths, jobs=RecordedJobs(), cooldown_s=600)
    first = webhook.handle({"alerts": [alert()]})[1]
    webhook.jobs.state, webhook.jobs.ended = "SUCCEEDED", time.time() - 60
    for _ in range(3):  # Alertmanager re-sends: one audit line, no job
        status, body = webhook.handle({"alerts": [alert("f2")]})
        assert status == 200 and body["status"] == "cooling down" and 500 <= body["retry_in_s"] <= 540
    deferred = [r for r in read_audit(paths.audit_log) if r["action"] == "alert-deferred"]
    assert len(deferred) == 1 and deferred[0]["incident"] == first["incident"]
    webhook.jobs.ended = time.time() - 601  # the pause is over and the alert still fires: it retrains
    status, body = webhook.handle({"alerts": [alert("f2")]})
    assert status == 202 and len(webhook.jobs.submitted) == 2


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
