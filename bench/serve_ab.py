"""Router overhead: p50/p99 latency and throughput through the ABRouter versus calling one variant directly.

Same run, same bundle, same machine: one ModelVariant deployment is served on its own route (the baseline) and
behind an ABRouter (weights 100/0, so every request takes the router hop and reaches the same model).

    python bench/serve_ab.py [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from pathlib import Path

from serve_latency import PORT, measure, train_bundle

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ray_app.package import ModelBundle
    from ray_app.serve.app import VariantArgs, variant_app
    from ray_app.serve.router import ABRouter
    from ray_app.serve.variant import BundleDirLoader

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    folder = args.out / "bundle"
    if not (folder / "bundle.json").exists():
        folder = train_bundle(args.out)
    bundle = ModelBundle.load(folder)
    row = {name: 0.1 for name in bundle.schema.numeric}
    row.update({name: values[0] for name, values in bundle.schema.categorical.items()})
    body = {"instances": [row]}

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    results = {}
    direct = variant_app(VariantArgs(model_uri=str(folder), variant="a"), loader=BundleDirLoader())
    serve.run(direct, name="direct", route_prefix="/direct")
    for clients in (1, 16):
        results[("direct", clients)] = asyncio.run(measure(f"http://127.0.0.1:{PORT}/direct/predict", body, clients,
                                                           args.duration))
    serve.delete("direct")
    variants = {name: variant_app(VariantArgs(model_uri=str(folder), variant=name), loader=BundleDirLoader())
                for name in ("a", "b")}
    routed = ABRouter.options(user_config={"experiment": "bench", "weights": {"a": 100, "b": 0}}).bind(variants)
    serve.run(routed, name="routed", route_prefix="/routed")
    for clients in (1, 16):
        results[("router", clients)] = asyncio.run(measure(f"http://127.0.0.1:{PORT}/routed", body, clients,
                                                           args.duration))
    serve.shutdown()
    ray.shutdown()

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"ray {ray.__version__}; {args.duration:.0f}s per cell, 1 row per request, batched variant, "
          "client in-process")
    print("| path | clients | req/s | p50 ms | p99 ms | errors | p50 vs direct |")
    print("|---|---|---|---|---|---|---|")
    for (path, clients), r in results.items():
        ratio = r["p50"] / results[("direct", clients)]["p50"]
        print(f"| {path} | {clients} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | "
              f"{ratio:.2f} |")


if __name__ == "__main__":
    main()
