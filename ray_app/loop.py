"""The Alertmanager webhook that closes the loop: a drift alert labelled `action=retrain` submits
`ray-app pipeline --canary` as a Ray job, with the stored feedback rows added to the training data.

Alertmanager re-sends a group until it resolves, so an alert is acted on once per (fingerprint, startsAt); an
alert that starts firing while a retrain runs (another feature of the same drift) joins that retrain instead of
queueing a second one, and for `cooldown_s` after a retrain ends new alerts wait (the new champion's own windows
must show the drift). Each retrain opens an incident (`ray_app.incidents`): its id names the job and follows it
through every stage into the audit log. The same service takes rollout control (`POST /rollout/promote|abort`).
Run it with `ray-app webhook` (bearer token from RAY_APP_ADMIN_TOKEN).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ray_app.config import ExperimentConfig, RuntimePaths, UserError
from ray_app.incidents import new_incident_id, record_step, retrain_job_id

logger = logging.getLogger(__name__)
ACTIVE = {"PENDING", "RUNNING"}
# After a retrain ends, drift is measured against the new champion's reference only from then on, and a flapping
# alert (the prediction's, typically) re-fires with a new start every few windows: without a pause every re-fire
# would retrain again. Alerts that arrive in this pause wait; one still firing after it retrains.
COOLDOWN_S = 1800.0


class RayJobs:
    """Submits and inspects jobs through the Ray Jobs API on the dashboard."""

    def __init__(self, dashboard_url: str):
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(dashboard_url)

    def submit(self, entrypoint: str, metadata: dict[str, str], submission_id: str | None = None) -> str:
        return self.client.submit_job(entrypoint=entrypoint, metadata=metadata, submission_id=submission_id)

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)

    def ended_at(self, job_id: str) -> float | None:
        """When the job ended (epoch seconds), or None while it runs."""
        end_ms = self.client.get_job_info(job_id).end_time
        return end_ms / 1000 if end_ms else None


class RetrainWebhook:
    """Decides what to do with one Alertmanager payload; `handle` returns (HTTP status, body)."""

    def __init__(self, paths: RuntimePaths, spec: str | None = None, jobs: RayJobs | None = None,
                 feedback: str | None = None, folder: Path | None = None, cooldown_s: float = COOLDOWN_S):
        self.paths, self.spec, self.cooldown_s = paths, spec, cooldown_s
        self.deferred: set[tuple[str | None, str | None]] = set()
        self.feedback = feedback or str(paths.home / "feedback")  # where the router keeps labelled rows
        self.jobs = jobs or RayJobs(paths.dashboard_url)
        self.folder = folder or paths.home / "webhook"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seen_file, self.last_job_file = self.folder / "seen.jsonl", self.folder / "last_job.json"
        self.seen = {tuple(json.loads(line)) for line in self._lines(self.seen_file)}
        self.lock = threading.Lock()

    @staticmethod
    def _lines(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def entrypoint(self, incident: str) -> str:
        parts = ["ray-app", "pipeline", "--canary", "--incident", incident, "--set", f"data.feedback={self.feedback}"]
        if self.spec:
            parts += ["--spec", self.spec]
        return shlex.join(parts)

    def last_job(self) -> tuple[dict | None, bool, float | None]:
        """The last submitted retrain ({job_id, incident, ...}), whether it still runs, and when it ended."""
        if not self.last_job_file.exists():
            return None, False, None
        last = json.loads(self.last_job_file.read_text())
        if self.jobs.status(last["job_id"]) in ACTIVE:
            return last, True, None
        return last, False, self.jobs.ended_at(last["job_id"])

    def handle(self, payload: object) -> tuple[int, dict]:
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            return 422, {"error": "expected an Alertmanager webhook payload with an 'alerts' list"}
        wanted = [a for a in payload["alerts"] if _is_retrain_alert(a)]
        with self.lock:
            new = [a for a in wanted if _alert_key(a) not in self.seen]
            if not new:
                return 200, {"status": "nothing new", "alerts": len(wanted)}
            names = sorted({_text(a["labels"].get("alertname")) or "?" for a in new})
            last, running, ended = self.last_job()
            if running:  # more of the same drift (another feature, the prediction): the running retrain answers it
                incident = last.get("incident")
                self._record(incident, "alert-joined", new, last["job_id"])
                return 200, {"status": "joined the running retrain", "job_id": last["job_id"],
                             "incident": incident, "alerts": names}
            if ended is not None and time.time() - ended < self.cooldown_s:
                waiting = [a for a in new if _alert_key(a) not in self.deferred]
                if waiting:  # audited once per alert; Alertmanager's re-sends only ask again
                    self._record(last.get("incident"), "alert-deferred", waiting, last["job_id"], remember=False)
                    self.deferred.update(_alert_key(a) for a in waiting)
                wait = self.cooldown_s - (time.time() - ended)
                return 200, {"status": "cooling down", "retry_in_s": round(wait), "alerts": names,
                             "incident": last.get("incident")}
            incident = new_incident_id(_alert_key(new[0])[0])
            job_id = self.jobs.submit(self.entrypoint(incident), {"trigger": "alertmanager", "alerts": ",".join(names),
                                                                  "incident": incident}, retrain_job_id(incident))
            self._record(incident, "alert", new, job_id)
            self.last_job_file.write_text(json.dumps({"job_id": job_id, "submitted": time.time(), "alerts": names,
                                                      "incident": incident}))
        logger.info("incident %s: retrain job %s submitted for %s", incident, job_id, names)
        return 202, {"status": "submitted", "job_id": job_id, "alerts": names, "incident": incident}

    def _record(self, incident: str | None, action: str, alerts: list[dict], job_id: str,
                remember: bool = True) -> None:
        """Audit the alerts under their incident and (`remember`) mark them acted on: a re-send changes nothing."""
        record_step(self.paths.audit_log, incident, action, trigger=_trigger(alerts), job_id=job_id,
                    starts_at=min(str(_alert_key(a)[1]) for a in alerts),
                    alerts=[{"fingerprint": _alert_key(a)[0], "starts_at": _alert_key(a)[1],
                             "labels": {k: _text(v) for k, v in a["labels"].items()}} for a in alerts])
        if not remember:
            return
        with self.seen_file.open("a") as fh:
            for a in alerts:
                key = _alert_key(a)
                self.seen.add(key)
                fh.write(json.dumps(key) + "\n")


def _trigger(alerts: list[dict]) -> str:
    """What fired, for people: `FeatureDriftPersistent(x0, x5) on ray-app-model`."""
    parts = []
    for name in sorted({_text(a["labels"].get("alertname")) or "?" for a in alerts}):
        mine = [a["labels"] for a in alerts if a["labels"].get("alertname") == name]
        features = sorted({_text(labels.get("feature")) for labels in mine} - {None})
        models = sorted({_text(labels.get("model")) for labels in mine} - {None})
        parts.append(name + (f"({', '.join(features)})" if features else "") + (f" on {', '.join(models)}"
                                                                                if models else ""))
    return "; ".join(parts)


def _text(value: object, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _is_retrain_alert(alert: object) -> bool:
    """A firing alert labelled `action=retrain`; anything else in the list (malformed included) is not acted on."""
    return (isinstance(alert, dict) and alert.get("status") == "firing" and isinstance(alert.get("labels"), dict)
            and alert["labels"].get("action") == "retrain")


def _alert_key(alert: dict) -> tuple[str | None, str | None]:
    """What makes an alert the same one when Alertmanager re-sends it: its fingerprint and start."""
    return _text(alert.get("fingerprint")), _text(alert.get("startsAt"))


RolloutControl = Callable[[str, str], dict]  # (promote | abort, reason) -> the outcome


def webhook_app(webhook: RetrainWebhook, token: str, rollout: RolloutControl | None = None):
    """The Starlette app, every route but `/healthz` behind the bearer token: `POST /alerts` (Alertmanager),
    `POST /rollout/promote|abort {"reason": ...}` (rollout control, when `rollout` is given)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ray_app.serve.validation import RequestError, parse_body

    async def authorized_body(request: Request) -> tuple[object, JSONResponse | None]:
        """The decoded JSON body (empty: `{}`), or the 401/400 answer to send instead."""
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return None, JSONResponse({"error": "needs 'Authorization: Bearer <token>'"}, status_code=401)
        raw = await request.body()
        try:
            return (parse_body(raw) if raw.strip() else {}), None
        except RequestError as exc:
            return None, exc.answer()

    async def alerts(request: Request) -> JSONResponse:
        payload, refusal = await authorized_body(request)
        if refusal is not None:
            return refusal
        status, body = await asyncio.to_thread(webhook.handle, payload)
        return JSONResponse(body, status_code=status)

    async def rollout_control(request: Request) -> JSONResponse:
        payload, refusal = await authorized_body(request)
        if refusal is not None:
            return refusal
        action = request.path_params["action"]
        if rollout is None or action not in ("promote", "abort"):
            return JSONResponse({"error": "POST /rollout/promote or /rollout/abort"}, status_code=404)
        reason = (_text(payload.get("reason")) if isinstance(payload, dict) else None) or "admin route"
        return JSONResponse(await asyncio.to_thread(rollout, action, reason))

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/alerts", alerts, methods=["POST"]), Route("/healthz", health),
                             Route("/rollout/{action}", rollout_control, methods=["POST"])])


def rollout_control(cfg: ExperimentConfig, paths: RuntimePaths) -> RolloutControl:
    """Promote or abort the spec's rollout now, as `ray-app rollout --promote|--abort` does."""
    from dataclasses import asdict

    from ray_app.rollout import RolloutController

    def act(action: str, reason: str) -> dict:
        controller = RolloutController(cfg, paths)
        outcome = (controller.promote if action == "promote" else controller.abort)(f"admin route: {reason}")
        return asdict(outcome)

    return act


def serve_webhook(cfg: ExperimentConfig, paths: RuntimePaths, spec: str | None, host: str, port: int,
                  cooldown_s: float = COOLDOWN_S) -> None:
    """Run the webhook (and the rollout control routes) until interrupted."""
    import uvicorn

    if not paths.admin_token:
        raise UserError("set RAY_APP_ADMIN_TOKEN: the webhook accepts only requests that carry it")
    app = webhook_app(RetrainWebhook(paths, spec, feedback=cfg.data.feedback, cooldown_s=cooldown_s), paths.admin_token,
                      rollout_control(cfg, paths))
    uvicorn.run(app, host=host, port=port, log_level="info")
