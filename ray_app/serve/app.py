"""Application builders named by `import_path` in `serve_configs/*.yaml` (args arrive as strings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from ray_app.config import ExperimentConfig, MonitorConfig, RuntimePaths, ServeSettings
from ray_app.serve.router import ABRouter, VariantCalls
from ray_app.serve.variant import ModelVariant, RegistryLoader
from ray_app.serve.weights import variant_deployment

# Replicas run user code on their own event loop rather than Ray's default second thread: both deployments keep
# CPU work off the loop (batching, `asyncio.to_thread`), and bench/serve_ab.py measured a cheaper router hop this
# way (p50 +10% at 1 client and -8% at 16, against +13% and +15% with Ray's default; bench/RESULTS.md). A handle's
# request router runs on that loop too, not on a loop of its own in another thread (as Ray's throughput-optimised
# mode sets it): the A/B router answered 1.4x the req/s at 1 client and 1.13x at 64 (bench/RESULTS.md, 2026-12-02).
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# Ray's HAProxy ingress (a cluster-level setting, read by the Serve controller): ~1 ms of CPU per request instead of
# the default proxy's ~4.5 ms here (bench/RESULTS.md). Its frontend binds `http_options.host` (127.0.0.1 here); its
# stats (8404) and metrics (9101) listeners and the replicas' direct-ingress ports (30000-31000) bind all interfaces.
HAPROXY_INGRESS_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}


def replica_options(num_cpus: float) -> dict:
    return {"num_cpus": num_cpus, "runtime_env": {"env_vars": REPLICA_ENV}}


class VariantArgs(BaseModel):
    """Builder arguments of one model variant; pydantic turns the CLI's strings into typed values."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str
    tracking_uri: str | None = None
    variant: str = "default"
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    batching: bool = True
    serve: ServeSettings = ServeSettings()  # max_rows, max_batch_size, batch_wait_timeout_s
    monitor: MonitorConfig = MonitorConfig()
    monitor_dir: str | None = None  # default: $RAY_APP_HOME/monitor


def monitor_app(settings: MonitorConfig, folder: str | None = None) -> Application:
    """The DriftMonitor that the variants of one app send their batch profiles to."""
    from ray_app.monitor.service import DriftMonitor

    return DriftMonitor.bind(folder or str(RuntimePaths.resolve().home / "monitor"), settings)


def variant_app(args: VariantArgs, loader=None, monitor: Application | None = None) -> Application:
    """Bind one ModelVariant; without a loader it reads the MLflow registry. With `monitor` (a bound
    DriftMonitor) it profiles what it serves."""
    loader = loader or RegistryLoader(args.tracking_uri or RuntimePaths.resolve().tracking_uri)
    deployment = ModelVariant.options(name=variant_deployment(args.variant), num_replicas=args.num_replicas,
                                      ray_actor_options=replica_options(args.num_cpus))
    return deployment.bind(args.model_uri, loader, args.serve, args.variant, args.batching, monitor, args.monitor)


def start_serving(model_uri: str, cfg: ExperimentConfig, paths: RuntimePaths, port: int,
                  batching: bool = True) -> str:
    """Run one model variant on Serve at http://127.0.0.1:<port>/ (monitored per `cfg.monitor`); returns the
    predict URL."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_single(VariantArgs(model_uri=model_uri, tracking_uri=paths.tracking_uri, batching=batching,
                                   monitor=cfg.monitor, serve=cfg.serve).model_dump())
    serve.run(app, name="model", route_prefix="/")
    return f"http://127.0.0.1:{port}/predict"


def wait_for_interrupt() -> None:
    """Keep this process (and the Serve app it started) alive until Ctrl-C."""
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def stop_haproxy_started_since(started: float) -> int:
    """End the HAProxy processes that Serve started since `started` (a time.time()). Ray 2.60 leaves them running
    when its Serve stops, orphaned and still bound to the HTTP port, 8404 and 9101, so the next HAProxy ingress
    on this machine cannot start. Returns how many were ended."""
    import psutil

    ended = 0
    for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
        command = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "haproxy" and "haproxy-serve" in command and proc.info["create_time"] >= started - 1:
            proc.terminate()
            ended += 1
    return ended


def build_single(args: dict) -> Application:
    """`import_path: ray_app.serve.app:build_single`: one model behind one route, monitored unless
    `monitor: {enabled: false}`."""
    parsed = VariantArgs.model_validate(args)
    monitor = monitor_app(parsed.monitor, parsed.monitor_dir) if parsed.monitor.enabled else None
    return variant_app(parsed, monitor=monitor)


class ABArgs(BaseModel):
    """Builder arguments of an A/B app: the variants by name and model URI. Weights go in `user_config`."""

    model_config = ConfigDict(extra="forbid")

    variants: dict[str, str] = Field(min_length=1)
    tracking_uri: str | None = None
    experiment: str = "ab"
    num_cpus: float = Field(0.5, gt=0)
    batching: bool = True
    feedback_dir: str | None = None  # default: $RAY_APP_HOME/feedback
    feedback_flush_rows: int = Field(100, ge=1)
    monitor: MonitorConfig = MonitorConfig()
    monitor_dir: str | None = None  # default: $RAY_APP_HOME/monitor
    variant_retries: int = Field(2, ge=0)  # a variant call whose replica died, asked again (/predict, /explain)
    variant_calls: VariantCalls = "grpc"  # the router's transport to its variants (router.py)


def ab_app(ab: ABArgs, user_config: dict | None = None) -> Application:
    """An ABRouter in front of one ModelVariant per model URI; without `user_config` the split is even."""
    monitor = monitor_app(ab.monitor, ab.monitor_dir) if ab.monitor.enabled else None
    variants = {name: variant_app(VariantArgs(model_uri=uri, tracking_uri=ab.tracking_uri, variant=name,
                                              num_cpus=ab.num_cpus, batching=ab.batching, monitor=ab.monitor),
                                  monitor=monitor)
                for name, uri in ab.variants.items()}
    default = {"experiment": ab.experiment, "weights": {name: 1.0 for name in ab.variants}}
    feedback_dir = ab.feedback_dir or str(RuntimePaths.resolve().home / "feedback")
    return ABRouter.options(user_config=user_config or default, ray_actor_options=replica_options(0.25)).bind(
        variants, feedback_dir, ab.feedback_flush_rows, variant_retries=ab.variant_retries,
        variant_calls=ab.variant_calls)


def build_ab(args: dict) -> Application:
    """`import_path: ray_app.serve.app:build_ab`; the deploy file's `user_config` sets weights and shadow."""
    return ab_app(ABArgs.model_validate(args))
