"""ABRouter: a weighted, sticky split of traffic across model variants, with an optional shadow.

Weights and the shadow live in the router's `user_config`, so `serve deploy` with new weights reconfigures the
running replicas in place. A user key (header or `user_id` field) is hashed with the experiment name into
[0, 1); the variants own consecutive slices of that interval in name order, so a key keeps its variant while the
weights stay, and raising one variant's weight only moves keys towards it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from ray_app.serve.validation import RequestError, parse_body

logger = logging.getLogger("ray.serve")
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


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
        negative = sorted(name for name, w in weights.items() if w < 0)
        if negative:
            raise ValueError(f"weights must be non-negative: {', '.join(negative)}")
        if not weights or sum(weights.values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return weights

    def check_names(self, known: set[str]) -> None:
        unknown = sorted((set(self.weights) | ({self.shadow} if self.shadow else set())) - known)
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; deployed: {', '.join(sorted(known))}")


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

    def __init__(self, variants: dict[str, DeploymentHandle]):
        from ray.serve.metrics import Counter, Histogram

        self.variants = variants
        self.settings: RouterSettings | None = None
        self._shadow_tasks: set[asyncio.Task] = set()
        tags = ("experiment", "variant")
        self.requests = Counter("ab_requests", description="requests answered, by variant", tag_keys=tags)
        self.errors = Counter("ab_errors", description="answers with status >= 500, by variant", tag_keys=tags)
        self.latency = Histogram("ab_latency_ms", description="router-measured latency by variant",
                                 boundaries=LATENCY_BUCKETS_MS, tag_keys=tags)
        self.predictions = Counter("ab_predictions", description="predicted class by variant",
                                   tag_keys=(*tags, "prediction"))
        self.shadow_results = Counter("ab_shadow", description="shadow answers: agree, disagree or error",
                                      tag_keys=(*tags, "outcome"))

    def reconfigure(self, config: dict) -> None:
        """Serve calls this with `user_config`; a bad config fails the update and the old one keeps serving."""
        settings = RouterSettings.model_validate(config)
        settings.check_names(set(self.variants))
        self.settings = settings
        logger.info("router %s: weights %s, shadow %s", settings.experiment, settings.weights, settings.shadow)

    def _choose(self, request: Request, payload: object) -> str:
        forced = request.headers.get(self.settings.force_header)
        if forced:
            if forced not in self.variants:
                raise RequestError(400, f"{self.settings.force_header}: unknown variant {forced!r}; "
                                        f"choose one of {', '.join(sorted(self.variants))}")
            return forced
        key = request.headers.get(self.settings.user_header)
        if key is None and isinstance(payload, dict) and payload.get("user_id") is not None:
            key = str(payload["user_id"])
        return assign(self.settings, key if key is not None else f"anon-{random.random()}")

    async def __call__(self, request: Request) -> JSONResponse:
        if self.settings is None:
            return JSONResponse({"error": "router has no user_config yet"}, status_code=503)
        if request.method != "POST":
            return JSONResponse({"error": "use POST with a JSON body"}, status_code=405)
        start = time.perf_counter()
        try:
            payload = parse_body(await request.body())
            variant = self._choose(request, payload)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        status, body = await self.variants[variant].handle_payload.remote(payload)
        tags = {"experiment": self.settings.experiment, "variant": variant}
        self.requests.inc(tags=tags)
        self.latency.observe((time.perf_counter() - start) * 1000, tags=tags)
        if status >= 500:
            self.errors.inc(tags=tags)
        for prediction in body.get("predictions", []):
            self.predictions.inc(tags={**tags, "prediction": str(prediction)})
        shadow = self.settings.shadow
        if shadow and shadow != variant and status == 200 and random.random() < self.settings.shadow_fraction:
            task = asyncio.create_task(self._mirror(shadow, payload, body.get("predictions")))
            self._shadow_tasks.add(task)  # keep a reference until done; its outcome never reaches the caller
            task.add_done_callback(self._shadow_tasks.discard)
        return JSONResponse({**body, "variant": variant}, status_code=status)

    async def _mirror(self, shadow: str, payload: object, primary: list | None) -> None:
        tags = {"experiment": self.settings.experiment, "variant": shadow}
        try:
            status, body = await self.variants[shadow].handle_payload.remote(payload)
            outcome = "error" if status != 200 else ("agree" if body.get("predictions") == primary else "disagree")
        except Exception:  # a failing shadow is only counted
            outcome = "error"
        self.shadow_results.inc(tags={**tags, "outcome": outcome})
