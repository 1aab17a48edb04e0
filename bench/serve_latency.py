"""Served model: throughput and p50/p99 latency at 1 and 16 concurrent clients, with and without @serve.batch.

One run, one machine: a model is trained (1 worker, 2 epochs; weights do not matter for speed), then the
same bundle is served unbatched (the baseline) and batched, and each is loaded over real HTTP on loopback.
The load generator is an asyncio httpx client in this process, so it shares the CPUs with the server.

    python bench/serve_latency.py [--duration 10] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PORT = 8011


async def _client(client, url: str, body: dict, stop_at: float, latencies: list[float], errors: list[int]):
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        response = await client.post(url, json=body)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(response.status_code)


async def measure(url: str, body: dict, clients: int, duration: float) -> dict:
    """Closed-loop load: `clients` concurrent callers for `duration` seconds after a short warm-up."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*[_client(client, url, body, time.perf_counter() + 1.0, [], []) for _ in range(clients)])
        latencies: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(*[_client(client, url, body, start + duration, latencies, errors)
                               for _ in range(clients)])
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": len(errors), "n": len(latencies)}


def train_bundle(out: Path) -> Path:
    from ray_app.config import ExperimentConfig, RuntimePaths
    from ray_app.pipeline import run_training
    from ray_app.registry import ModelRegistry

    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(out / "home")}).ensure()
    cfg = ExperimentConfig(name="bench").with_overrides(train={"num_workers": 1, "epochs": 2})
    report = run_training(cfg, paths)
    bundle, _ = ModelRegistry(paths.tracking_uri).load_bundle(report.model.uri)
    return bundle.save(out / "bundle")


def parse_args(doc: str, rounds: int = 1) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per cell")
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def prepare_bundle(out: Path, reuse: bool) -> tuple[Path, dict]:
    """Start a local Ray, get a bundle folder (trained now unless `reuse` finds one) and a one-row request."""
    import ray

    from ray_app.package import ModelBundle

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    folder = out / "bundle"
    if not (reuse and (folder / "bundle.json").exists()):
        folder = train_bundle(out)
    bundle = ModelBundle.load(folder)
    row = {name: 0.1 for name in bundle.schema.numeric}
    row.update({name: values[0] for name, values in bundle.schema.categorical.items()})
    return folder, {"instances": [row]}


def main() -> None:
    args = parse_args(__doc__)

    import ray
    from ray import serve

    from ray_app.serve.app import VariantArgs, variant_app
    from ray_app.serve.variant import BundleDirLoader

    folder, body = prepare_bundle(args.out, reuse=False)

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    results: dict[tuple[str, int], dict] = {}
    for mode in ("unbatched", "batched"):
        app = variant_app(VariantArgs(model_uri=str(folder), variant=mode, batching=mode == "batched"),
                          loader=BundleDirLoader())
        serve.run(app, name="bench", route_prefix="/bench")
        for clients in (1, 16):
            results[(mode, clients)] = asyncio.run(measure(f"http://127.0.0.1:{PORT}/bench/predict", body,
                                                           clients, args.duration))
        serve.delete("bench")
    serve.shutdown()
    ray.shutdown()

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"ray {ray.__version__}; {args.duration:.0f}s per cell, 1 row per request, client in-process")
    print("| mode | clients | req/s | p50 ms | p99 ms | errors | req/s vs unbatched |")
    print("|---|---|---|---|---|---|---|")
    for (mode, clients), r in results.items():
        ratio = r["rps"] / results[("unbatched", clients)]["rps"]
        print(f"| {mode} | {clients} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | "
              f"{ratio:.2f} |")


if __name__ == "__main__":
    main()
