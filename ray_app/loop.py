"""The Alertmanager webhook that closes the loop: a drift alert labelled `action=retrain` submits
`ray-app pipeline --canary` as a Ray job, with the stored feedback rows added to the training data.

Alertmanager re-sends a group until it resolves, so an alert is acted on once per (fingerprint, startsAt), and
no job is submitted while the previous retrain still runs. The same service takes rollout control
(`POST /rollout/promote|abort`). Run it with `ray-app webhook` (bearer token from RAY_APP_ADMIN_TOKEN).
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

logger = logging.getLogger(__name__)
ACTIVE = {"PENDING", "RUNNING"}


class RayJobs:
    """Submits and inspects jobs through the Ray Jobs API on the dashboard."""

    def __init__(self, dashboard_url: str):
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(dashboard_url)

    def submit(self, entrypoint: str, metadata: dict[str, str]) -> str:
        return self.client.submit_job(entrypoint=entrypoint, metadata=metadata)

    def status(self, job_id: str) -> str:
        return str(self.client.get_job_status(job_id).value)


class RetrainWebhook:
    """Decides what to do with one Alertmanager payload; `handle` returns (HTTP status, body)."""

    def __init__(self, paths: RuntimePaths, spec: str | None = None, jobs: RayJobs | None = None):
        self.paths, self.spec = paths, spec
        self.jobs = jobs or RayJobs(paths.dashboard_url)
        self.folder = paths.home / "webhook"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seen_file, self.last_job_file = self.folder / "seen.jsonl", self.folder / "last_job.json"
        self.seen = {tuple(json.loads(line)) for line in self._lines(self.seen_file)}
        self.lock = threading.Lock()

    @staticmethod
    def _lines(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def entrypoint(self) -> str:
        parts = ["ray-app", "pipeline", "--canary", "--set", f"data.feedback={self.paths.home / 'feedback'}"]
        if self.spec:
            parts += ["--spec", self.spec]
        return shlex.join(parts)

    def running_job(self) -> str | None:
        if not self.last_job_file.exists():
            return None
        job_id = json.loads(self.last_job_file.read_text())["job_id"]
        return job_id if self.jobs.status(job_id) in ACTIVE else None

    def handle(self, payload: object) -> tuple[int, dict]:
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            return 422, {"error": "expected an Alertmanager webhook payload with an 'alerts' list"}
        wanted = [a for a in payload["alerts"] if _is_retrain_alert(a)]
        with self.lock:
            new = [a for a in wanted if _alert_key(a) not in self.seen]
            if not new:
                return 200, {"status": "nothing new", "alerts": len(wanted)}
            running = self.running_job()
            if running:
                return 409, {"status": "a retrain is running", "job_id": running,
                             "error": f"retrain job {running} is still running; the alert is taken when it ends"}
            names = sorted({_text(a["labels"].get("alertname")) or "?" for a in new})
            job_id = self.jobs.submit(self.entrypoint(), {"trigger": "alertmanager", "alerts": ",".join(names)})
            with self.seen_file.open("a") as fh:
                for a in new:
                    key = _alert_key(a)
                    self.seen.add(key)
                    fh.write(json.dumps(key) + "\n")
            self.last_job_file.write_text(json.dumps({"job_id": job_id, "submitted": time.time(), "alerts": names}))
        logger.info("retrain job %s submitted for %s", job_id, names)
        return 202, {"status": "submitted", "job_id": job_id, "alerts": names}


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


def serve_webhook(cfg: ExperimentConfig, paths: RuntimePaths, spec: str | None, host: str, port: int) -> None:
    """Run the webhook (and the rollout control routes) until interrupted."""
    import uvicorn

    if not paths.admin_token:
        raise UserError("set RAY_APP_ADMIN_TOKEN: the webhook accepts only requests that carry it")
    app = webhook_app(RetrainWebhook(paths, spec), paths.admin_token, rollout_control(cfg, paths))
    uvicorn.run(app, host=host, port=port, log_level="info")
