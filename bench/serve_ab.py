"""Router overhead: p50/p99 latency and throughput through the ABRouter versus calling one variant directly.

Same run, same bundle, same machine: one ModelVariant deployment is served on its own route (the baseline) and
behind an ABRouter (weights 100/0, so every request takes the router hop and reaches the same model).

    python bench/serve_ab.py [--duration 10]
"""

from __future__ import annotations

import asyncio
import os
import platform

from serve_latency import PORT, measure, parse_args, prepare_bundle


def main() -> None:
    args = parse_args(__doc__)

    import ray
    from ray import serve

    from ray_app.serve.app import VariantArgs, variant_app
    from ray_app.serve.router import ABRouter
    from ray_app.serve.variant import BundleDirLoader

    folder, body = prepare_bundle(args.out, reuse=True)
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
