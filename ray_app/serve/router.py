"""ABRouter: a weighted, sticky split of traffic across model variants, with an optional shadow.

Weights and the shadow live in the router's `user_config`, so `serve deploy` with new weights reconfigures the
running replicas in place. A user key (header or `user_id` field) is hashed with the experiment name into
[0, 1); the variants own consecutive slices of that interval in name order, so a key keeps its variant while the
weights stay, and raising one variant's weight only moves keys towards it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import random
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from ray_app.config import RuntimePaths, UserError
from ray_app.serve.feedback import FeedbackLog
from ray_app.serve.validation import JSONAnswer, RequestError, check_ids, describe, parse_body
from ray_app.telemetry import HeldGauges

logger = logging.getLogger("ray.serve")
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
# A variant call whose replica died is retried this often (by default), after 0.2 s, then 0.4 s: Serve's handle
# learns of the death from the failed call and the controller within that time, and the next try goes to a live one.
VARIANT_RETRIES = 2
RETRY_PAUSE_S = 0.2
# How the router calls its variants. "grpc": Serve's by-value handle path, straight to the replica's gRPC server
# (every replica runs one, with Ray's token auth); "actor": a Ray actor call whose answer goes through the object
# store. gRPC answered 1.5x the req/s at 1 and 64 clients, 1.7x at 16 (alternating runs, bench/RESULTS.md).
VariantCalls = Literal["grpc", "actor"]


class RouterSettings(BaseModel):
    """The router's `user_config`: weights per variant, the shadow, and which headers carry key and override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = "ab"
    weights: dict[str, float]
    shadow: str | None = None
    shadow_fraction: float = Field(1.0, ge=0.0, le=1.0)
    user_header: str = "x-user-id"
    force_header: str = "x-variant"

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unusable = sorted(name for name, w in weights.items() if not 0 <= w < math.inf)
        if unusable:
            raise ValueError(f"weights must be finite and non-negative: {', '.join(unusable)}")
        if not weights or sum(weights.values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return weights

    def check_names(self, known: set[str]) -> None:
        unknown = sorted((set(self.weights) | ({self.shadow} if self.shadow else set())) - known)
        if unknown:
            raise UserError(f"unknown variant(s) {', '.join(unknown)}; deployed: {', '.join(sorted(known))}")


def bucket(experiment: str, key: str) -> float:
    """A stable position in [0, 1) for (experiment, key): hashlib, never `hash()`, which differs per process."""
    digest = hashlib.sha256(f"{experiment}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(settings: RouterSettings, key: str) -> str:
    """The variant whose slice of [0, 1) holds this key's bucket."""
    total = sum(settings.weights.values())
    point, edge = bucket(settings.experiment, key) * total, 0.0
    names = [name for name in sorted(settings.weights) if settings.weights[name] > 0]
    for name in names:
        edge += settings.weights[name]
        if point < edge:
            return name
    return names[-1]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
class ABRouter:
    """Ingress: picks a variant per request, calls it by handle, mirrors to the shadow, says who answered."""

    def __init__(self, variants: dict[str, DeploymentHandle], feedback_dir: str | None = None,
                 feedback_flush_rows: int = 100, remembered_requests: int = 100_000, admin_token: str | None = None,
                 variant_retries: int = VARIANT_RETRIES, variant_calls: VariantCalls = "grpc"):
        from ray.serve.metrics import Counter, Gauge, Histogram

        # `_by_reference=False` is how Serve 2.60 names its gRPC handle path (ray.serve.handle); a failed call
        # raises ActorUnavailableError, a RayActorError, so `_ask` retries it as it does an actor call.
        self.variants = {name: handle.options(_by_reference=variant_calls == "actor")
                         for name, handle in variants.items()}
        self.variant_retries = variant_retries
        self.settings: RouterSettings | None = None
        # Read in the replica, not passed through the deploy config, where the dashboard would show it.
        self.admin_token = admin_token or RuntimePaths.resolve().admin_token
        self._shadow_tasks: set[asyncio.Task] = set()
        self.feedback = FeedbackLog(feedback_dir, feedback_flush_rows, remembered_requests)
        tags = ("experiment", "variant")
        self.requests = Counter("ab_requests", description="requests answered, by variant", tag_keys=tags)
        self.errors = Counter("ab_errors", description="answers with status >= 500, by variant", tag_keys=tags)
        self.latency = Histogram("ab_latency_ms", description="router-measured latency by variant",
                                 boundaries=LATENCY_BUCKETS_MS, tag_keys=tags)
        self.predictions = Counter("ab_predictions", description="predicted class by variant",
                                   tag_keys=(*tags, "prediction"))
        self.shadow_results = Counter("ab_shadow", description="shadow answers: agree, disagree or error",
                                      tag_keys=(*tags, "outcome"))
        self.labelled = Counter("ab_feedback", description="labelled predictions: correct or wrong (classification)",
                                tag_keys=(*tags, "outcome"))
        self.weight = Gauge("ab_weight", description="configured share of traffic, percent (the rollout step)",
                            tag_keys=tags)
        self.held = HeldGauges()  # the weight is a state: re-set every second, or Ray's agent drops it in ~20 s
        self.label_error = Histogram("ab_feedback_abs_error", description="absolute error of labelled predictions "
                                     "(regression)", boundaries=[0.1, 0.5, 1, 2, 5, 10, 20, 50, 100], tag_keys=tags)

    def reconfigure(self, config: dict) -> None:
        """Serve calls this with `user_config`; a bad config fails the update and the old one keeps serving."""
        settings = RouterSettings.model_validate(config)
        settings.check_names(set(self.variants))
        self._apply(settings)
        logger.info("router %s: weights %s, shadow %s", settings.experiment, settings.weights, settings.shadow)

    def _apply(self, settings: RouterSettings) -> None:
        previous, self.settings = self.settings, settings
        total = sum(settings.weights.values())
        for name in self.variants:
            if previous is not None and previous.experiment != settings.experiment:
                self.held.forget(self.weight, {"experiment": previous.experiment, "variant": name})
            self.held.set(self.weight, 100 * settings.weights.get(name, 0) / total,
                          {"experiment": settings.experiment, "variant": name})

    def _choose(self, request: Request, payload: object) -> str:
        forced = request.headers.get(self.settings.force_header)
        if forced:
            if forced not in self.variants:
                raise RequestError(400, f"{self.settings.force_header}: unknown variant {describe(forced)}; "
                                        f"choose one of {', '.join(sorted(self.variants))}")
            return forced
        key = request.headers.get(self.settings.user_header)
        if isinstance(payload, dict):
            check_ids(payload)
        if key is None and isinstance(payload, dict) and payload.get("user_id") is not None:
            key = str(payload["user_id"])
        return assign(self.settings, key if key is not None else f"anon-{random.random()}")

    async def __call__(self, request: Request) -> JSONAnswer:
        if self.settings is None:
            return JSONAnswer({"error": "router has no user_config yet"}, status_code=503)
        path = request.url.path.rstrip("/")
        if "/admin/" in f"{path}/":
            return await self._admin(request, path.rsplit("/admin", 1)[1].strip("/"))
        route = path.rsplit("/", 1)[-1]
        if request.method == "GET" and route in ("healthz", "health"):
            return JSONAnswer({"status": "ok", "experiment": self.settings.experiment,
                               "weights": self.settings.weights})
        if request.method == "GET" and route == "schema":
            return JSONAnswer(await self._schema())
        if request.method != "POST":
            return JSONAnswer({"error": "use POST with a JSON body, or GET /schema"}, status_code=405)
        if path.endswith("/feedback"):
            return await self._feedback(request)
        start = time.perf_counter()
        try:
            payload = parse_body(await request.body())
            variant = self._choose(request, payload)
        except RequestError as exc:
            return exc.answer()
        if route == "explain":  # the assigned variant's attributions: not counted, remembered or shadowed
            status, body = await self._ask(variant, "handle_explain", payload)
            return JSONAnswer({**body, "variant": variant}, status_code=status)
        status, body = await self._ask(variant, "handle_payload", payload)
        tags = {"experiment": self.settings.experiment, "variant": variant}
        self.requests.inc(tags=tags)
        self.latency.observe((time.perf_counter() - start) * 1000, tags=tags)
        if status >= 500:
            self.errors.inc(tags=tags)
        for prediction in body.get("predictions", []):
            self.predictions.inc(tags={**tags, "prediction": str(prediction)})
        if status == 200:
            given = payload.get("request_id") if isinstance(payload, dict) else None
            body["request_id"] = str(given) if given is not None else uuid.uuid4().hex
            self.feedback.remember(body["request_id"], variant, payload["instances"], body["predictions"],
                                   "probabilities" in body)
        shadow = self.settings.shadow
        if shadow and shadow != variant and status == 200 and random.random() < self.settings.shadow_fraction:
            task = asyncio.create_task(self._mirror(shadow, payload, body.get("predictions")))
            self._shadow_tasks.add(task)  # keep a reference until done; its outcome never reaches the caller
            task.add_done_callback(self._shadow_tasks.discard)
        return JSONAnswer({**body, "variant": variant}, status_code=status)

    async def _ask(self, variant: str, method: str, payload: object) -> tuple[int, dict]:
        """Score (or explain) on the variant. A replica that dies under the call (its node lost) is asked again
        on another: scoring is idempotent, and Serve's handle has already dropped the dead replica. (`/feedback`
        changes state and never comes here.)"""
        from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError

        for attempt in range(self.variant_retries + 1):
            try:
                return await getattr(self.variants[variant], method).remote(payload)
            except RayActorError as exc:
                if attempt == self.variant_retries:
                    return self._failed(variant, exc)
                logger.warning("variant %s: replica lost (%s), asking another", variant, type(exc).__name__)
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
            except Exception as exc:  # a crashed variant is that variant's error, counted and answered
                return self._failed(variant, exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _failed(variant: str, exc: Exception) -> tuple[int, dict]:
        logger.warning("variant %s failed: %s", variant, exc)
        return 500, {"error": f"variant {variant} failed: {type(exc).__name__}"}

    async def _schema(self) -> dict:
        """Every variant's `/schema`; the shared input contract on top when all variants take the same rows."""
        infos = dict(zip(self.variants, await asyncio.gather(*(h.schema_info.remote() for h in self.variants.values())),
                         strict=True))
        answer: dict = {"experiment": self.settings.experiment, "variants": infos}
        schemas = [info["schema"] for info in infos.values()]
        if all(schema == schemas[0] for schema in schemas):
            answer.update(schema=schemas[0], max_rows=min(info["max_rows"] for info in infos.values()))
        return answer

    async def _admin(self, request: Request, route: str) -> JSONAnswer:
        """`GET|POST /admin/weights`: read or set this replica's weights (bearer token). A later `serve deploy`
        of `user_config` replaces them; the rollout controller uses this route or Serve's REST API."""
        if not self.admin_token:
            return JSONAnswer({"error": "admin routes are off: set RAY_APP_ADMIN_TOKEN where the router runs"},
                                status_code=403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            return JSONAnswer({"error": "admin routes need 'Authorization: Bearer <token>'"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if route != "weights":
            return JSONAnswer({"error": f"no admin route {route!r}; try /admin/weights"}, status_code=404)
        if request.method == "POST":
            try:
                payload = parse_body(await request.body())
                if not isinstance(payload, dict):
                    raise RequestError(422, 'expected {"weights": {"variant": weight, ...}}')
                settings = RouterSettings.model_validate({**self.settings.model_dump(), **payload})
                settings.check_names(set(self.variants))
            except RequestError as exc:
                return JSONAnswer({"error": exc.message}, status_code=exc.status)
            except ValueError as exc:
                return JSONAnswer({"error": str(exc)}, status_code=422)
            self._apply(settings)
            logger.info("router %s: weights set by admin route to %s", settings.experiment, settings.weights)
        elif request.method != "GET":
            return JSONAnswer({"error": "use GET or POST"}, status_code=405)
        return JSONAnswer({"experiment": self.settings.experiment, "weights": self.settings.weights,
                             "shadow": self.settings.shadow, "shadow_fraction": self.settings.shadow_fraction})

    async def _mirror(self, shadow: str, payload: object, primary: list | None) -> None:
        tags = {"experiment": self.settings.experiment, "variant": shadow}
        try:
            status, body = await self.variants[shadow].handle_payload.remote(payload)
            outcome = "error" if status != 200 else ("agree" if body.get("predictions") == primary else "disagree")
        except Exception:  # a failing shadow is only counted
            outcome = "error"
        self.shadow_results.inc(tags={**tags, "outcome": outcome})

    async def _feedback(self, request: Request) -> JSONAnswer:
        """`POST .../feedback {"request_id": ..., "labels": [...]}`: score the earlier answer, keep the rows."""
        try:
            payload = parse_body(await request.body())
            if not isinstance(payload, dict) or "request_id" not in payload or "labels" not in payload:
                raise RequestError(422, 'expected {"request_id": "...", "labels": [one per instance]}')
            check_ids(payload)
            variant, outcomes = self.feedback.label(str(payload["request_id"]), payload["labels"])
        except RequestError as exc:
            return exc.answer()
        tags = {"experiment": self.settings.experiment, "variant": variant}
        for outcome in outcomes:
            if isinstance(outcome, bool):
                self.labelled.inc(tags={**tags, "outcome": "correct" if outcome else "wrong"})
            else:
                self.label_error.observe(outcome, tags=tags)
        return JSONAnswer({"request_id": payload["request_id"], "variant": variant, "labelled": len(outcomes)})

    def __del__(self):
        self.feedback.flush()
