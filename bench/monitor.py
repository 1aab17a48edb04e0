"""Monitoring costs and detection: serving throughput with monitoring on versus off, profiling rows/s, and
detection delay / false alerts of the drift rule (Bonferroni p-value + PSI floor, 3 windows in a row).

    python bench/monitor.py [--duration 10] [--stationary-windows 500]

Do not run `ray stop` while this runs: it kills processes whose command line contains "monitor.py".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import PORT, ROOT, measure, prepare_bundle  # noqa: E402

PERSIST = 3  # windows in a row, as `for: 10m` with 300 s windows in cluster/prometheus/rules/drift.yml


def frame(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    data = {f"x{i}": rng.normal(size=n) for i in range(6)}
    data["x0"] = data["x0"] + shift
    data["segment"] = rng.choice(["a", "b", "c"], n)
    data["channel"] = rng.choice(["web", "app", "store"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame(data)


def profiling_rate(rng) -> dict[int, float]:
    from ray_app.profiles import profile_frame

    rates = {}
    for rows in (256, 10_000):
        batch = frame(rng, rows)
        profile_frame(batch)
        start, reps = time.perf_counter(), max(3, 20_000 // rows)
        for _ in range(reps):
            profile_frame(batch)
        rates[rows] = rows * reps / (time.perf_counter() - start)
    return rates


def monitoring_cost_per_row(rng, batch: int = 256) -> float:
    """What the monitoring path costs a served row, in microseconds of CPU: the variant concatenates its buffered
    one-row frames and profiles them, the monitor merges the profile into the open window."""
    from ray_app.profiles import merge_profiles, profile_frame

    rows = [frame(rng, 1) for _ in range(batch)]
    window = profile_frame(frame(rng, 20_000))
    start = time.process_time()
    for _ in range(5):
        merge_profiles(window, profile_frame(pd.concat(rows, ignore_index=True)))
    return (time.process_time() - start) / 5 / batch * 1e6


def alert_stream(flags: list[bool]) -> list[int]:
    """Indices (1-based) of windows where the persistence rule fires; it re-arms after firing."""
    fired, run = [], 0
    for i, flagged in enumerate(flags, 1):
        run = run + 1 if flagged else 0
        if run == PERSIST:
            fired.append(i)
            run = 0
    return fired


def detection(rng, window_rows: int, stationary: int, episodes: int) -> dict:
    from ray_app.config import MonitorConfig
    from ray_app.monitor.drift import compare_profiles
    from ray_app.profiles import profile_frame

    settings = MonitorConfig(min_rows=200)
    numeric, categorical = [f"x{i}" for i in range(6)], ["segment", "channel"]
    reference = profile_frame(frame(rng, 20_000))

    def judge(window: pd.DataFrame):
        return compare_profiles(reference, profile_frame(window), numeric, categorical, settings)

    flags, naive = [], 0
    for _ in range(stationary):
        report = judge(frame(rng, window_rows))
        flags.append(bool(report.drifted))
        naive += any(f.p_value < 0.05 for f in report.features)
    delays = []
    for _ in range(episodes):
        shifted = [bool(judge(frame(rng, window_rows, shift=0.5)).drifted) for _ in range(3 * PERSIST)]
        fired = alert_stream(shifted)
        delays.append(fired[0] if fired else None)
    found = [d for d in delays if d is not None]
    return {"stationary": stationary, "flagged": sum(flags), "alerts": len(alert_stream(flags)),
            "naive": naive, "episodes": episodes, "detected": len(found),
            "median_delay": float(np.median(found)) if found else None, "max_delay": max(found, default=None)}


def throughput(args, folder: Path, body: dict) -> dict[str, list[float]]:
    import ray
    from ray import serve

    from ray_app.config import MonitorConfig
    from ray_app.serve.app import VariantArgs, monitor_app, variant_app
    from ray_app.serve.variant import BundleDirLoader

    settings = MonitorConfig(window_s=5)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    off = variant_app(VariantArgs(model_uri=str(folder), variant="off"), loader=BundleDirLoader())
    on = variant_app(VariantArgs(model_uri=str(folder), variant="on", monitor=settings), loader=BundleDirLoader(),
                     monitor=monitor_app(settings, str(args.out / "monitor")))
    serve.run(off, name="off", route_prefix="/off")
    serve.run(on, name="on", route_prefix="/on")
    results: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):  # ABBA: cancels the machine's drift
            r = asyncio.run(measure(f"http://127.0.0.1:{PORT}/{name}/predict", body, 16, args.duration))
            results[name].append(r["rps"])
    serve.shutdown()
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per cell")
    parser.add_argument("--rounds", type=int, default=4, help="off/on alternations")
    parser.add_argument("--window-rows", type=int, default=500)
    parser.add_argument("--stationary-windows", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=30, help="shift episodes for the detection delay")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    folder, body = prepare_bundle(args.out, reuse=True)
    tp = throughput(args, folder, body)  # first, on a fresh process: the offline parts below load this one
    rates = profiling_rate(rng)
    per_row_us = monitoring_cost_per_row(rng)
    det = detection(rng, args.window_rows, args.stationary_windows, args.episodes)

    import ray

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, ray {ray.__version__}")
    print("\n| serving, 16 clients, 1 row/request | req/s per round | mean req/s | on / off |")
    print("|---|---|---|---|")
    for name in ("off", "on"):
        ratio = np.mean(tp[name]) / np.mean(tp["off"])
        print(f"| monitoring {name} | {', '.join(f'{r:.0f}' for r in tp[name])} | {np.mean(tp[name]):.0f} | "
              f"{ratio:.3f} |")
    print(f"\nmonitoring CPU per served row (concat + profile + merge, batches of 256): {per_row_us:.0f} us")
    print("\n| profiling (whylogs adapter) | rows/s |")
    print("|---|---|")
    for rows, rate in rates.items():
        print(f"| batches of {rows} rows | {rate:,.0f} |")
    print(f"\n| drift rule, windows of {args.window_rows} rows, {PERSIST} in a row | value |")
    print("|---|---|")
    print(f"| stationary windows | {det['stationary']} |")
    print(f"| windows flagged (Bonferroni p + PSI >= 0.1) | {det['flagged']} |")
    print(f"| false alerts (rule) | {det['alerts']} |")
    print(f"| windows a naive rule (any feature p < 0.05) would flag | {det['naive']} |")
    print(f"| 0.5 SD shift on x0: episodes detected | {det['detected']} / {det['episodes']} |")
    print(f"| detection delay, windows (median / max) | {det['median_delay']} / {det['max_delay']} |")


if __name__ == "__main__":
    main()
