"""Drift gauges and alerts with windows long against Ray's gauge TTL (~20 s), in a real Prometheus running the
shipped drift rules with their `for` durations scaled to 30 s windows.

Ray's metrics agent drops a gauge that its process has not set again within two export intervals; the
DriftMonitor and the router hold theirs (re-set every second), so a window's figures stay in Prometheus until the
next window replaces them. Three streams are fed window by window straight into a real DriftMonitor replica:
`steady` drifts in every window, `flapping` in every other one, `quiet` sends one stationary window and stops.
"""

import time

import httpx
import numpy as np
import pandas as pd
import pytest
from ray import serve

from ray_app.config import MonitorConfig
from ray_app.monitor.drift import StreamSchema
from ray_app.monitor.exporter import EXPORTED
from ray_app.monitor.service import DriftMonitor
from ray_app.profiles import profile_frame
from ray_app.serve.router import ABRouter
from tests.conftest import FAST_METRICS, ROOT, start_prometheus, stop_service, wait_until

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

WINDOW_S = 30.0
RAY_GAUGE_TTL_S = 20.0  # 2 x Ray's default 10 s export interval
SCRAPE_S = 1.0
APP = "drift-alerts"
SCHEMA = StreamSchema(numeric=["x0", "x1"], categorical=[])


@pytest.fixture
def prometheus_with_rules(ray_cluster, tmp_path):
    """A Prometheus scraping the session cluster every second, with the shipped drift rules, `for` scaled:
    FeatureDriftPersistent spans three windows ((3 - 1) x 30 s), DriftMonitorStale waits 10 s instead of 5m."""
    rules = (ROOT / "cluster" / "prometheus" / "rules" / "drift.yml").read_text()
    assert "for: 10m" in rules and "for: 5m" in rules
    (tmp_path / "drift.yml").write_text(rules.replace("for: 10m", f"for: {2 * WINDOW_S:.0f}s")
                                        .replace("for: 5m", "for: 10s"))
    url, proc = start_prometheus(tmp_path, ray_cluster["metrics"], rule_files=[str(tmp_path / "drift.yml")])
    yield url
    stop_service(proc)


def _frame(seed: int, shift: float, rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x0": rng.normal(shift, 1.0, rows), "x1": rng.normal(0.0, 1.0, rows)})


def _query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr, **({"time": at} if at else {})}
    return httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10).json()["data"]["result"]


def _firing(prometheus: str, alert: str) -> list[dict]:
    return [a["labels"] for a in httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def _runs(timestamps: list[float], step: float) -> int:
    """How many separate stretches a series of sample times forms (a gap longer than ~one step splits them)."""
    return sum(1 for i, t in enumerate(timestamps) if i == 0 or t - timestamps[i - 1] > 1.5 * step)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def test_drift_gauges_stay_and_alerts_fire_once_persistent_never_flapping_and_stale(prometheus_with_rules,
                                                                                   tmp_path):
    prometheus = prometheus_with_rules
    settings = MonitorConfig(window_s=WINDOW_S, min_rows=200)
    monitor = DriftMonitor.options(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": FAST_METRICS}})
    bound = monitor.bind(str(tmp_path / "monitor"), settings)
    # A router whose only job here is its weight gauge: set once at deploy, it must stay.
    router = ABRouter.options(user_config={"experiment": "held", "weights": {"a": 70, "b": 30}},
                              ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": FAST_METRICS}})
    serve.run(router.bind({"a": bound, "b": bound}), name=APP, route_prefix=f"/{APP}")
    handle = serve.get_deployment_handle("DriftMonitor", APP)
    reference = profile_frame(_frame(0, 0.0, rows=4000))
    streams = ("steady", "flapping", "quiet")
    for variant in streams:
        handle.register.remote("m", variant, reference, SCHEMA).result()
    plan = {  # window -> the x0 shift of each stream's batch in it (none: no batch)
        0: {"steady": 1.5, "flapping": 1.5, "quiet": 0.0},
        1: {"steady": 1.5, "flapping": 0.0},
        2: {"steady": 1.5, "flapping": 1.5},
        3: {"steady": 1.5, "flapping": 0.0},
    }
    first = (time.time() // WINDOW_S + 1) * WINDOW_S  # W0: the next window boundary
    deleted = False
    try:
        for k, batches in plan.items():
            _sleep_until(first + k * WINDOW_S + 1)
            for variant, shift in batches.items():
                handle.merge.remote("m", variant, profile_frame(_frame(10 * k + len(variant), shift)), 400).result()

        # steady: detected from W1 (its first window closed) on; `for` = two windows, so firing by ~W3. Had the
        # gauges lapsed between windows, the pending alert would have reset each time and never fired.
        wait_until(lambda: _firing(prometheus, "FeatureDriftPersistent"),
                   timeout=first + 3 * WINDOW_S + 28 - time.time(), what="FeatureDriftPersistent for the steady stream")
        held_since = first + WINDOW_S + 5  # W0 closed at W1; exported within a few seconds
        _sleep_until(held_since + 3 * RAY_GAUGE_TTL_S + 3)
        now = time.time()
        span = f"{int(now - held_since)}s"
        for name in EXPORTED:
            for variant in ("steady", "quiet"):  # quiet: no traffic since W0, its last window held all the same
                series = _query(prometheus, f'{name}{{model="m",variant="{variant}"}}[{span}]', now)
                assert series, f"{name} for {variant} is missing"
                for s in series:
                    stamps = [float(t) for t, _ in s["values"]]
                    assert stamps[0] <= held_since + 2 * SCRAPE_S and stamps[-1] >= now - 2 * SCRAPE_S, (name, s)
                    gaps = np.diff(stamps)
                    assert gaps.max() <= 2 * SCRAPE_S, f"{name} {s['metric']} has a {gaps.max():.1f}s gap"
        weights = _query(prometheus, f'ray_ab_weight{{experiment="held"}}[{span}]', now)
        assert {s["metric"]["variant"]: float(s["values"][-1][1]) for s in weights} == {"a": 70.0, "b": 30.0}
        assert all(np.diff([float(t) for t, _ in s["values"]]).max() <= 2 * SCRAPE_S for s in weights), weights

        closed = handle.status.remote().result()
        flapping = ["x0" in w["drifted"] for w in closed["m/flapping"]["closed"]]
        assert flapping == [True, False, True], closed["m/flapping"]  # it did drift, by turns
        serve.delete(APP)  # the monitor dies: its gauges go, and staleness must still be reported
        deleted = True

        # quiet: last window ended at W1, stale after three windows (W4) plus `for`; steady: last at W3, so ~W6
        wait_until(lambda: {a["variant"] for a in _firing(prometheus, "DriftMonitorStale")} >= {"quiet", "steady"},
                   timeout=first + 6 * WINDOW_S + 45 - time.time(), what="DriftMonitorStale for quiet and steady")
        end = time.time()
        alerts = httpx.get(f"{prometheus}/api/v1/query_range", timeout=10, params={
            "query": 'ALERTS{alertname="FeatureDriftPersistent",alertstate="firing"}',
            "start": first, "end": end, "step": "1s"}).json()["data"]["result"]
    finally:
        if not deleted:
            serve.delete(APP)
    fired = {(a["metric"]["variant"], a["metric"]["feature"]): _runs([float(t) for t, _ in a["values"]], 1.0)
             for a in alerts}
    assert fired == {("steady", "x0"): 1}, fired  # once for steady (one unbroken stretch), never for flapping
