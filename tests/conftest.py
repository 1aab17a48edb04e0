"""Shared fixtures: one real Ray cluster (`ray start --head` on 127.0.0.1) and one trained model per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Ray 2.60 clusters started by `ray start` require a token (~/.ray/auth_token); Ray reads this at import.
os.environ["RAY_AUTH_MODE"] = "token"

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVE_PORT = 8000  # serve_configs/*.yaml bind 127.0.0.1:8000, and a cluster has one HTTP port
ADMIN_TOKEN = "test-admin-token"  # the router's admin routes read RAY_APP_ADMIN_TOKEN in the replica
# For the deployments whose metrics a test reads from Prometheus: they reach it in ~1 s instead of Ray's ~5-10.
# Per deployment (runtime_env), not cluster-wide: a 1 s report interval on every Train and Tune actor made the
# tuning tests ~40% slower on two cores.
FAST_METRICS = {"RAY_metrics_report_interval_ms": "1000"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def app_home(tmp_path_factory) -> Path:
    """RAY_APP_HOME for the whole session: MLflow store, data and Ray Train storage live here."""
    home = tmp_path_factory.mktemp("ray_app_home")
    os.environ["RAY_APP_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("RAY_APP_STORAGE", None)
    return home


def ray_processes() -> list[str]:
    """Ray's daemons (`gcs_server`, `raylet`) running on this machine, as "name (pid)"."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "pid"]):
        if proc.info["name"] in ("gcs_server", "raylet"):
            found.append(f"{proc.info['name']} ({proc.info['pid']})")
    return found


def _run(cmd: list[str], env: dict, timeout: float) -> None:
    done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")


@pytest.fixture(scope="session")
def ray_cluster(app_home):
    """A head node with the dashboard (Jobs API, `serve deploy`) on loopback; the test process joins it.

    The suite refuses to start next to another Ray cluster (the stages would join it, and `ray stop` at the end
    would take it down), and the cluster it starts is stopped however the session ends: by this fixture's
    teardown, or by tests/session_reaper.py once the pytest process is gone without one.
    """
    import ray

    from ray_app.connect import local_cpus

    stray = ray_processes()
    if stray:
        pytest.exit(f"a Ray cluster is already running on this machine ({', '.join(stray)}); the tests start "
                    "their own. Stop it with `ray stop --force` (or `make cluster-down`) and run them again.",
                    returncode=3)
    port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    # Jobs run `ray-app` from the cluster's PATH: put this venv's bin first.
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["RAY_APP_ADMIN_TOKEN"] = ADMIN_TOKEN
    os.environ["RAY_DASHBOARD_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    # Ray Train's controller polls its workers every 2 s, so each run ended ~2-4 s after its last epoch; the suite
    # runs ~40 of them. A missed poll is not a failure (a worker is declared dead after 10 minutes of them).
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env = dict(os.environ)
    # The token `ray start` and the `serve`/`ray job` CLIs read (~/.ray/auth_token); made once if missing.
    _run([str(BIN / "ray"), "get-auth-token", "--generate"], env, timeout=60)
    reaper = subprocess.Popen([sys.executable, str(ROOT / "tests" / "session_reaper.py"), str(os.getpid()),
                               str(BIN / "ray")], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--num-cpus={local_cpus()}",
              f"--metrics-export-port={metrics_port}", "--object-store-memory=400000000", "--disable-usage-stats"],
             env, timeout=180)
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield {"address": os.environ["RAY_ADDRESS"], "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env,
               "metrics": f"127.0.0.1:{metrics_port}", "port": port}
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, timeout=180, capture_output=True)
            reaper.terminate()


@pytest.fixture(scope="session")
def paths(ray_cluster):
    from ray_app.config import RuntimePaths

    return RuntimePaths.resolve().ensure()


def small_config(**sections):
    """A config that trains in well under a minute on two cores."""
    from ray_app.config import ExperimentConfig

    base = ExperimentConfig(name="test").with_overrides(
        data={"synthetic": {"rows": 2000, "drift": 0.0}},
        train={"num_workers": 2, "epochs": 6, "batch_size": 32, "lr": 0.005, "cpus_per_worker": 1},
    )
    return base.with_overrides(**sections) if sections else base


@pytest.fixture(scope="session")
def champion(paths):
    """A 2-worker training run, registered and aliased `champion` (the name serve_configs/single.yaml uses)."""
    from ray_app.pipeline import run_training
    from ray_app.registry import ModelRegistry

    report = run_training(small_config(), paths, run_name="champion-run")
    ModelRegistry(paths.tracking_uri).set_alias(report.model.name, "champion", report.model.version)
    return report


class LoadThreads:
    """Background threads, each running `self._run(n)` until the `with` block ends (`self.stop` is set)."""

    def __init__(self, threads: int):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def start_service(cmd: list[str], ready_url: str, log: Path, timeout: float = 60) -> subprocess.Popen:
    """Start a server process (Prometheus, Alertmanager) and wait for its readiness URL."""
    import httpx

    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, what=f"{cmd[0]} at {ready_url}")
    return proc


def stop_service(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def tool(name: str) -> str:
    """A Debian binary (`prometheus`, `promtool`, `prometheus-alertmanager`, `amtool`; `make test` installs them).
    Tests that need one fail, not skip, without it."""
    import shutil

    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `apt-get install prometheus prometheus-alertmanager`")
    return found


def start_prometheus(folder: Path, metrics_target: str, interval: str = "1s", **extra) -> tuple[str, subprocess.Popen]:
    """A real Prometheus on loopback scraping one Ray metrics port every `interval` (rules evaluated every second);
    `extra` goes into its config (`rule_files`, `alerting`). Returns its URL and process."""
    import yaml

    port = free_port()
    config = {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": "1s"},
              **extra,
              "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [metrics_target]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    proc = start_service([tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                          f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                         f"{url}/-/ready", folder / "prometheus.log")
    return url, proc


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory) -> str:
    """A real Prometheus on loopback scraping this session's Ray metrics every 3 s, for one module; yields its URL.

    Per module, not per session: each scrape of Ray's metrics page costs the cluster CPU, and a Prometheus
    left scraping after the module that needed it made the tuning tests run ~20% slower.

    Not every second: Ray's metrics agent keeps every counter and histogram series of every process the session
    ever ran, and late in the suite its page held ~27,000 samples and took about a second to serve on two busy
    cores; with a 1 s scrape (whose timeout cannot exceed the interval) most scrapes failed and a rollout step
    saw no traffic at all."""
    url, proc = start_prometheus(tmp_path_factory.mktemp("prometheus"), ray_cluster["metrics"], interval="3s")
    yield url
    stop_service(proc)
