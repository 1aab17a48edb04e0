"""Serving against a hand-written FastAPI app: req/s and p50/p99 at 1, 16 and 64 clients, one row per request.

One run, one machine, one bundle. Each server runs in its own process (and its own Ray), the load generator
(bench/loadgen.py, aiohttp) in another. The cells (CELLS below):
  fastapi        a bare FastAPI + uvicorn app doing the same work by hand: parse, validate, the bundle's compiled
                 encoder and ONNX network, answer (the baseline of every ratio)
  serve          `ray-app serve` as shipped: Serve's default proxy, batching and monitoring on
  serve-slow     `serve` with the fast path off (transform_batch + torch: the serving path before it)
  serve-5ms      `serve` with batch_wait_timeout_s 0.005 (the old default) instead of 0
  haproxy        `serve` behind Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1 for the controller)
  haproxy-opt    the same plus RAY_SERVE_THROUGHPUT_OPTIMIZED=1
  haproxy-unbatched, haproxy-nomon, haproxy-opt-nomon   without @serve.batch / without monitoring
  serve-opt      `serve` plus RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (default proxy)
  router         the A/B router (one variant at weight 1) in front of `haproxy`
  router-opt     the router in front of `haproxy-opt`
  router-actor   `router` calling its variant by Ray actor call instead of gRPC (the transport before 2026-12-02)
  serve-before   `serve` from another checkout (`--before PATH`, e.g. a worktree of the commit before a change)

    python bench/serve_vs_fastapi.py [--cells fastapi,serve,haproxy,...] [--clients 1,16,64] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import Request, Response  # module level: FastAPI resolves the handler's annotations here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
CELLS: dict[str, dict] = {
    "fastapi": {},
    "serve": {},
    "serve-slow": {"fast_path": False},
    "serve-5ms": {"wait": 0.005},
    "haproxy": {"env": HAPROXY},
    "haproxy-opt": {"env": {**HAPROXY, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},
    "haproxy-opt-nomon": {"env": {**HAPROXY, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, "monitor": False},
    "serve-opt": {"env": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}},
    "haproxy-unbatched": {"env": HAPROXY, "batching": False},
    "haproxy-nomon": {"env": HAPROXY, "monitor": False},
    "router": {"env": HAPROXY, "router": True},
    "router-opt": {"env": {**HAPROXY, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, "router": True},
    "router-actor": {"env": HAPROXY, "router": True, "calls": "actor"},
    "serve-before": {},
}
PORT = 8013


def fastapi_app(folder: str):
    """The hand-written baseline: no Ray, the same bundle's fast path."""
    import orjson
    from fastapi import FastAPI

    from ray_app.package import ModelBundle
    from ray_app.serve.validation import RequestError, check_outputs, parse_body, validate_instances

    bundle = ModelBundle.load(folder)
    assert bundle.compile(1e-4).startswith("fast"), "the baseline needs the fast path"
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        try:
            rows = validate_instances(parse_body(await request.body()), bundle.schema, 1000)
            output = bundle.score(rows.numeric, rows.categorical)
            check_outputs(output)
        except RequestError as exc:
            return exc.answer()
        return Response(orjson.dumps(bundle.answer(output)), media_type="application/json")

    return app


def serve_cell(cell: str, folder: str, port: int) -> None:
    """Run one Serve cell in this process until SIGTERM."""
    spec = CELLS[cell]
    os.environ.update(spec.get("env", {}))  # read at import by the Serve controller, which inherits it
    import ray
    from ray import serve

    from ray_app.config import MonitorConfig, ServeSettings
    from ray_app.serve.app import VariantArgs, monitor_app, variant_app
    from ray_app.serve.router import ABRouter
    from ray_app.serve.variant import BundleDirLoader

    ray.init(address="local", num_cpus=6, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tuned = {"fast_path": spec["fast_path"]} if "fast_path" in spec else {}
    tuned.update({"batch_wait_timeout_s": spec["wait"]} if "wait" in spec else {})
    settings = ServeSettings(**tuned)  # only what the cell changes: an older checkout may lack the field
    monitor = monitor_app(MonitorConfig(), tempfile.mkdtemp()) if spec.get("monitor", True) else None
    variant = variant_app(VariantArgs(model_uri=folder, variant="bench", serve=settings,
                                      batching=spec.get("batching", True)), loader=BundleDirLoader(), monitor=monitor)
    calls = {"variant_calls": spec["calls"]} if "calls" in spec else {}  # an older checkout may lack the argument
    app = (ABRouter.options(user_config={"experiment": "bench", "weights": {"bench": 1}}).bind({"bench": variant},
                                                                                                **calls)
           if spec.get("router") else variant)
    serve.run(app, name="bench", route_prefix="/")
    signal.signal(signal.SIGTERM, lambda *_: (serve.shutdown(), ray.shutdown(), sys.exit(0)))
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def start_server(cell: str, folder: str, port: int, log: Path, body_file: Path,
                 before: Path | None = None) -> subprocess.Popen:
    if cell == "fastapi":
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import uvicorn, serve_vs_fastapi as b; "
                f"uvicorn.run(b.fastapi_app({folder!r}), host='127.0.0.1', port={port}, log_level='warning')")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, __file__, "--serve", cell, "--bundle", folder, "--port", str(port)]
    other = cell == "serve-before"  # its own tree first on the path, and as the working directory Ray ships
    env = {**os.environ, **({"PYTHONPATH": str(before)} if other else {})}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
                            cwd=before if other else None)
    deadline, body = time.monotonic() + 240, body_file.read_bytes()
    while time.monotonic() < deadline:
        try:  # ready is a scored row: HAProxy answers 404 for 1-2 s while Serve hands it the route
            if httpx.post(f"http://127.0.0.1:{port}/predict", content=body, timeout=2,
                          headers={"content-type": "application/json"}).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"{cell} did not start: see {log}")


def stop_server(proc: subprocess.Popen, started: float) -> None:
    from ray_app.serve.app import stop_haproxy_started_since

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    stop_haproxy_started_since(started)  # Ray leaves it bound to the port the next cell needs


def load(url: str, body_file: Path, clients: int, duration: float) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "loadgen.py"), url, str(body_file), "--clients",
                           str(clients), "--duration", str(duration)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(c for c in CELLS if c != "serve-before"))
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--reuse", action="store_true", help="reuse bench/out/bundle if it is there")
    parser.add_argument("--before", type=Path, help="a checkout whose `ray-app serve` is measured as serve-before")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_cell(args.serve, args.bundle, args.port)
        return

    from serve_latency import prepare_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    folder, body = prepare_bundle(args.out, reuse=args.reuse)
    import ray

    ray.shutdown()
    body_file = args.out / "one_row.json"
    body_file.write_text(json.dumps(body))
    clients = [int(c) for c in args.clients.split(",")]
    results: dict[tuple[str, int], dict] = {}
    for cell in args.cells.split(","):
        started = time.time()
        proc = start_server(cell, str(folder), args.port, args.out / f"server-{cell}.log", body_file,
                            args.before)
        try:
            for n in clients:
                results[(cell, n)] = load(f"http://127.0.0.1:{args.port}/predict", body_file, n, args.duration)
                print(cell, n, results[(cell, n)], flush=True)
        finally:
            stop_server(proc, started)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"ray {ray.__version__}; {args.duration:.0f} s per cell, 1 row per request, load generator in its own "
          "process")
    print("| server | clients | req/s | p50 ms | p99 ms | errors | req/s vs fastapi | p50 vs fastapi |")
    print("|---|---|---|---|---|---|---|---|")
    for (cell, n), r in results.items():
        base = results.get(("fastapi", n))
        ratio = (f"{r['rps'] / base['rps']:.3f} | {r['p50'] / base['p50']:.2f}" if base else "- | -")
        print(f"| {cell} | {n} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {ratio} |")
    pairs = [("serve", "serve-before", "rps"), ("serve", "serve-before", "p50"), ("router", "haproxy", "p50"),
             ("router", "router-actor", "rps"), ("router", "router-actor", "p50"),
             ("haproxy", "haproxy-nomon", "rps"), ("serve-5ms", "serve", "rps"), ("serve-5ms", "serve", "p50"),
             ("serve", "serve-slow", "rps"), ("haproxy-opt", "haproxy", "rps"), ("haproxy-unbatched", "haproxy", "rps")]
    for a, b, key in pairs:
        if all((c, n) in results for c in (a, b) for n in clients):
            print(f"{a} / {b} {key}: " + ", ".join(f"{n} clients {results[(a, n)][key] / results[(b, n)][key]:.2f}"
                                                   for n in clients))


if __name__ == "__main__":
    main()
