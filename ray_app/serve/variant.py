"""`ModelVariant`: a Ray Serve deployment of one model, built from a model URI through an injectable loader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pandas as pd
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ray_app.config import MonitorConfig, ServeSettings
from ray_app.package import ModelBundle
from ray_app.registry import ModelRef, ModelRegistry
from ray_app.serve.validation import RequestError, parse_body, validate_instances

logger = logging.getLogger("ray.serve")

BundleLoader = Callable[[str], tuple[ModelBundle, ModelRef]]


class RegistryLoader:
    """The default loader: a `models:/` URI from the MLflow registry at `tracking_uri`."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri

    def __call__(self, model_uri: str) -> tuple[ModelBundle, ModelRef]:
        return ModelRegistry(self.tracking_uri).load_bundle(model_uri)


class BundleDirLoader:
    """Loads a bundle folder written by `ModelBundle.save`, with no registry involved (tests, air-gapped use)."""

    def __call__(self, model_uri: str) -> tuple[ModelBundle, ModelRef]:
        folder = model_uri.removeprefix("file://")
        return ModelBundle.load(folder), ModelRef(name=folder, version="local", run_id=None)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class ModelVariant:
    """Answers `POST /predict` with `{"instances": [...]}`; `GET /schema` and `GET /healthz` describe it."""

    def __init__(self, model_uri: str, loader: BundleLoader, settings: ServeSettings | None = None,
                 variant: str = "default", batching: bool = True, monitor=None,
                 monitor_settings: MonitorConfig | None = None):
        import torch

        from ray_app.monitor.drift import StreamSchema
        from ray_app.monitor.live import LiveProfiler

        torch.set_num_threads(1)  # small MLPs: one thread per replica beats oversubscribing the cores
        self.bundle, self.ref = loader(model_uri)
        self.model_uri, self.variant, self.batching = model_uri, variant, batching
        self.settings = settings or ServeSettings()
        self._predict_batched.set_max_batch_size(self.settings.max_batch_size)
        self._predict_batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.profiler = None
        if monitor is not None and self.bundle.reference_profile is not None:
            schema = self.bundle.schema
            stream = StreamSchema(numeric=schema.numeric, categorical=list(schema.categorical), label=schema.label,
                                  regression=schema.task == "regression")
            self.profiler = LiveProfiler(monitor, self.ref.name, variant, self.bundle.reference_profile, stream,
                                         monitor_settings or MonitorConfig())
        logger.info("variant %s serving %s (%s)", variant, self.ref.uri, model_uri)

    def describe(self) -> dict:
        return {"variant": self.variant, "model_uri": self.model_uri, "model": self.ref.uri}

    async def predict(self, rows: pd.DataFrame) -> dict:
        """Predict validated rows; used by the HTTP route and by routers holding a handle."""
        if self.batching:
            return await self._predict_batched(rows)
        return await asyncio.to_thread(self.bundle.predict, rows)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _predict_batched(self, frames: list[pd.DataFrame]) -> list[dict]:
        merged = await asyncio.to_thread(self.bundle.predict, pd.concat(frames, ignore_index=True))
        results, start = [], 0
        for frame in frames:
            end = start + len(frame)
            results.append({key: values[start:end] for key, values in merged.items()})
            start = end
        return results

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and path in ("healthz", "health"):
            return JSONResponse({"status": "ok", **self.describe()})
        if request.method == "GET" and path == "schema":
            return JSONResponse({**self.describe(), "schema": self.bundle.schema.model_dump(),
                                 "max_rows": self.settings.max_rows})
        if request.method != "POST":
            return JSONResponse({"error": "use POST with a JSON body, or GET /schema"}, status_code=405)
        try:
            payload = parse_body(await request.body())
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        status, body = await self.handle_payload(payload)
        return JSONResponse(body, status_code=status)

    async def __del__(self):
        """Serve awaits this on a graceful shutdown: rows not yet profiled go to the monitor first."""
        if getattr(self, "profiler", None) is not None:
            await self.profiler.flush()

    async def handle_payload(self, payload: object) -> tuple[int, dict]:
        """Validate a decoded JSON payload and predict: (HTTP status, body). Routers call this by handle."""
        try:
            rows = validate_instances(payload, self.bundle.schema, self.settings.max_rows)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        result = await self.predict(rows)
        if self.profiler is not None:
            self.profiler.observe(rows, result["predictions"])
        return 200, {**result, **self.describe()}
