"""`ModelVariant`: a Ray Serve deployment of one model, built from a model URI through an injectable loader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
from ray import serve
from starlette.requests import Request

from ray_app.config import MonitorConfig, ServeSettings
from ray_app.package import ModelBundle
from ray_app.registry import ModelRef, ModelRegistry
from ray_app.serve.validation import (
    JSONAnswer,
    RequestError,
    ValidRows,
    check_outputs,
    parse_body,
    validate_instances,
)

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
    """Answers `POST /predict` with `{"instances": [...]}` (and `POST /explain`: the same rows' attributions);
    `GET /schema` and `GET /healthz` describe it."""

    def __init__(self, model_uri: str, loader: BundleLoader, settings: ServeSettings | None = None,
                 variant: str = "default", batching: bool = True, monitor=None,
                 monitor_settings: MonitorConfig | None = None):
        import torch

        torch.set_num_threads(1)  # small MLPs: one thread per replica beats oversubscribing the cores
        self.loader, self.variant, self.batching = loader, variant, batching
        self.monitor, self.monitor_settings = monitor, monitor_settings or MonitorConfig()
        self.settings = settings or ServeSettings()
        self._outputs_batched.set_max_batch_size(self.settings.max_batch_size)
        self._outputs_batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.profiler = None
        self._use(*self._load(model_uri))

    def _load(self, model_uri: str) -> tuple:
        """Load `model_uri` with its fast path and live profiler (no event loop needed: runs in a thread too)."""
        from ray_app.monitor.drift import StreamSchema
        from ray_app.monitor.live import LiveProfiler

        bundle, ref = self.loader(model_uri)
        profiler = None
        if self.monitor is not None and bundle.reference_profile is not None:
            schema = bundle.schema
            stream = StreamSchema(numeric=schema.numeric, categorical=list(schema.categorical), label=schema.label,
                                  regression=schema.task == "regression")
            profiler = LiveProfiler(self.monitor, ref.name, self.variant, bundle.reference_profile, stream,
                                    self.monitor_settings)
            profiler.warm()
        path = (bundle.compile(self.settings.parity_tolerance) if self.settings.fast_path
                else "slow path (transform_batch + torch): serve.fast_path is off")
        return model_uri, bundle, ref, profiler, path

    def _use(self, model_uri: str, bundle: ModelBundle, ref: ModelRef, profiler, path: str) -> None:
        """Serve the loaded model from the next request on."""
        old, self.profiler = self.profiler, profiler
        self.bundle, self.ref, self.model_uri = bundle, ref, model_uri
        if old is not None:
            old.close()
        logger.info("variant %s serving %s (%s) through the %s", self.variant, ref.uri, model_uri, path)

    async def reconfigure(self, config: dict) -> None:
        """`user_config: {model_uri: ...}` swaps the model (a rollout serves a new challenger, or the promoted one
        as champion); requests are answered by the old model until the new one is loaded. Serve 2.60 rolls the
        replicas to new ones when it changes (seen in tests/e2e/test_closed_loop.py), so the rollout controller
        swaps a variant only while it takes no traffic."""
        model_uri = (config or {}).get("model_uri")
        if model_uri and model_uri != self.model_uri:
            self._use(*await asyncio.to_thread(self._load, model_uri))

    def describe(self) -> dict:
        return {"variant": self.variant, "model_uri": self.model_uri, "model": self.ref.uri}

    def schema_info(self) -> dict:
        """What `GET /schema` answers: the model, its input contract and the row limit."""
        return {**self.describe(), "schema": self.bundle.schema.model_dump(), "max_rows": self.settings.max_rows}

    async def predict(self, rows: ValidRows) -> dict:
        """Predict validated rows; rows whose output is not finite raise RequestError (422)."""
        output = await (self._outputs_batched(rows) if self.batching else self._score(rows.numeric, rows.categorical))
        check_outputs(output)
        return self.bundle.answer(output)

    async def _score(self, numeric: np.ndarray, categorical: list[list[str]]) -> np.ndarray:
        if self.bundle.compiled:  # tens of microseconds: a thread hop would cost more than it frees
            return self.bundle.score(numeric, categorical)
        return await asyncio.to_thread(self.bundle.score, numeric, categorical)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _outputs_batched(self, batch: list[ValidRows]) -> list[np.ndarray]:
        merged = await self._score(*ValidRows.concat(batch))
        return np.split(merged, np.cumsum([len(rows) for rows in batch])[:-1])

    async def __call__(self, request: Request) -> JSONAnswer:
        path = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and path in ("healthz", "health"):
            return JSONAnswer({"status": "ok", **self.describe()})
        if request.method == "GET" and path == "schema":
            return JSONAnswer(self.schema_info())
        if request.method != "POST":
            return JSONAnswer({"error": "use POST with a JSON body, or GET /schema"}, status_code=405)
        try:
            payload = parse_body(await request.body())
        except RequestError as exc:
            return exc.answer()
        handle = self.handle_explain if path == "explain" else self.handle_payload
        status, body = await handle(payload)
        return JSONAnswer(body, status_code=status)

    async def __del__(self):
        """Serve awaits this on a graceful shutdown: rows not yet profiled go to the monitor first."""
        if getattr(self, "profiler", None) is not None:
            await self.profiler.flush()

    async def handle_payload(self, payload: object) -> tuple[int, dict]:
        """Validate a decoded JSON payload and predict: (HTTP status, body). Routers call this by handle."""
        try:
            rows = validate_instances(payload, self.bundle.schema, self.settings.max_rows)
            result = await self.predict(rows)
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        if self.profiler is not None:
            self.profiler.observe(rows.numeric, rows.categorical, result["predictions"])
        return 200, {**result, **self.describe()}

    async def handle_explain(self, payload: object) -> tuple[int, dict]:
        """`POST /explain`, validated as a prediction: each row's prediction and its Integrated Gradients, one
        per input feature (`ray_app.explain`). Not profiled: it is not traffic."""
        from ray_app.explain import integrated_gradients

        try:
            rows = validate_instances(payload, self.bundle.schema, self.settings.max_rows)
            result = await self.predict(rows)
            frame = self.bundle.frame(rows.numeric, rows.categorical)
            values = await asyncio.to_thread(integrated_gradients, self.bundle, frame)
            if not np.isfinite(values).all():
                raise RequestError(422, "inputs out of range: their attributions are not finite numbers")
        except RequestError as exc:
            return exc.status, {"error": exc.message}
        features = self.bundle.schema.features
        return 200, {**result, "method": "integrated gradients", "features": features,
                     "attributions": [dict(zip(features, row.tolist(), strict=True)) for row in values],
                     **self.describe()}
