"""`ray-app demo`: the built-in data to a served model in one command (pipeline, then serve the champion and
answer one sample request)."""

from __future__ import annotations

import json

from ray_app.config import ExitCode, ExperimentConfig, RuntimePaths
from ray_app.pipeline import run_pipeline
from ray_app.registry import ModelRegistry
from ray_app.serve.app import start_serving


def run_demo(cfg: ExperimentConfig, paths: RuntimePaths, port: int, registry: ModelRegistry) -> ExitCode:
    """Data gate, N-worker Ray Train, model gate, promotion; then serve the champion and send it a sample."""
    import httpx

    def log(text: str) -> None:
        print("[demo] " + text.replace("\n", "\n[demo] "))

    log(f"pipeline {cfg.name!r} on {cfg.data.source!r}: data gate, {cfg.train.num_workers}-worker Ray Train, "
        "model gate, promotion")
    code = run_pipeline(cfg, paths, log=log, registry=registry)
    if code == ExitCode.REJECTED:
        log("the new model was not promoted; serving the current champion")
    url = start_serving(f"models:/{cfg.registry.model_name}@champion", cfg, paths, port)
    schema = httpx.get(url.rsplit("/", 1)[0] + "/schema", timeout=30).json()["schema"]
    sample = {name: 0.0 for name in schema["numeric"]}
    sample.update({name: values[0] for name, values in schema["categorical"].items()})
    response = httpx.post(url, json={"instances": [sample]}, timeout=30)
    log(f"POST {url} {json.dumps({'instances': [sample]})}")
    log(f"-> {response.status_code} {response.text}")
    return ExitCode.OK if response.status_code == 200 else ExitCode.ERROR
