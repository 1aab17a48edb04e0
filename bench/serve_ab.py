"""Router overhead: p50/p99 latency and throughput through the ABRouter versus calling one variant directly.

Same run, same bundle, same machine: one ModelVariant deployment is served on its own route (the baseline) and
behind an ABRouter (weights 100/0, so every request takes the router hop and reaches the same model).

    python bench/serve_ab.py [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics

from serve_latency import PORT, measure, parse_args, prepare_bundle


def main() -> None:
    args = parse_args(__doc__, rounds=3)

    import ray
    from ray import serve

    from ray_app.serve.app import VariantArgs, replica_options, variant_app
    from ray_app.serve.router import ABRouter
    from ray_app.serve.variant import BundleDirLoader

    folder, body = prepare_bundle(args.out, reuse=True)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    direct = variant_app(VariantArgs(model_uri=str(folder), variant="a"), loader=BundleDirLoader())
    serve.run(direct, name="direct", route_prefix="/direct")
    variants = {name: variant_app(VariantArgs(model_uri=str(folder), variant=name), loader=BundleDirLoader())
                for name in ("a", "b")}
    routed = ABRouter.options(user_config={"experiment": "bench", "weights": {"a": 100, "b": 0}},
                              ray_actor_options=replica_options(0.25)).bind(variants)
    serve.run(routed, name="routed", route_prefix="/routed")
    urls = {"direct": f"http://127.0.0.1:{PORT}/direct/predict", "router": f"http://127.0.0.1:{PORT}/routed"}
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):  # both apps stay up; alternating cells share the machine's drift
        for clients in (1, 16):
            for path, url in urls.items():
                runs.setdefault((path, clients), []).append(asyncio.run(measure(url, body, clients, args.duration)))
    serve.shutdown()
    ray.shutdown()

    def median(path: str, clients: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[(path, clients)])

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"ray {ray.__version__}; {args.rounds} alternating rounds of {args.duration:.0f}s per cell (medians), "
          "1 row per request, batched variant, client in-process")
    print("| path | clients | req/s | p50 ms | p99 ms | errors | p50 vs direct | p50 per round |")
    print("|---|---|---|---|---|---|---|---|")
    for path, clients in sorted(runs, key=lambda k: (k[1], k[0] != "direct")):
        ratio = median(path, clients, "p50") / median("direct", clients, "p50")
        rounds = ", ".join(f"{r['p50']:.1f}" for r in runs[(path, clients)])
        print(f"| {path} | {clients} | {median(path, clients, 'rps'):.0f} | {median(path, clients, 'p50'):.1f} | "
              f"{median(path, clients, 'p99'):.1f} | {sum(r['errors'] for r in runs[(path, clients)])} | "
              f"{ratio:.2f} | {rounds} |")


if __name__ == "__main__":
    main()
