"""Search efficiency: trial-epochs to reach a target validation metric, TPE+ASHA versus random search.

Both searches get the same space, trial budget and epochs per trial on the built-in synthetic set; random
search runs every trial to the end (no early stopping), TPE+ASHA lets Optuna propose and ASHA stop weak trials.
For each seed, every reported epoch of every trial is ordered by time and counted until the first one reaches
the target; the table shows the median over seeds and the ratio to random search (lower is better).

    python bench/tune.py [--seeds 3] [--trials 8] [--epochs 5] [--target 0.97]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time


def trial_epochs_to_target(results, metric: str, target: float) -> float:
    """Epochs consumed across all trials, in time order, until one report reaches the target (inf if none)."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and metric in frame:
            rows += list(zip(frame["timestamp"], frame.index, frame[metric], strict=True))
    rows.sort(key=lambda row: (row[0], row[1]))
    for count, (_, _, value, *_) in enumerate(rows, start=1):
        if value >= target:
            return float(count)
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()

    import ray

    from ray_app.config import ExperimentConfig, RuntimePaths
    from ray_app.data.preprocess import prepare
    from ray_app.registry import ModelRegistry
    from ray_app.tune.search import build_tuner

    paths = RuntimePaths.resolve({"RAY_APP_HOME": tempfile.mkdtemp(prefix="ray_app_tune_bench_")}).ensure()
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    base = ExperimentConfig.model_validate({
        "name": "tune-bench",
        "data": {"synthetic": {"rows": args.rows}},
        "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": args.epochs, "batch_size": 64},
        "tune": {"metric": "val_roc_auc", "mode": "max", "num_samples": args.trials, "trial_cpus": 0.25,
                 "grace_period": 1, "reduction_factor": 2,
                 "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                           "model.width": {"type": "choice", "values": [8, 16, 32, 64, 128]},
                           "model.depth": {"type": "randint", "low": 1, "high": 3},
                           "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
                           "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2}}},
    })
    data = prepare(base.data, paths.data_dir)
    registry = ModelRegistry(paths.tracking_uri, paths.artifact_root)
    methods = {"random, no early stopping": {"algorithm": "random", "scheduler": "none"},
               "TPE + ASHA": {"algorithm": "optuna", "scheduler": "asha"}}
    counts: dict[str, list[float]] = {name: [] for name in methods}
    totals: dict[str, list[int]] = {name: [] for name in methods}
    started = time.time()
    for seed in range(args.seeds):
        for label, knobs in methods.items():
            cfg = base.with_overrides(tune={**knobs, "seed": seed}, train={"seed": seed})
            name = f"bench-{knobs['algorithm']}-{seed}"
            parent = registry.start_run("tune-bench", name, {}, {})
            results = build_tuner(cfg, data, paths, name, parent, resume=False).fit()
            counts[label].append(trial_epochs_to_target(results, "val_roc_auc", args.target))
            totals[label].append(sum(int(r.metrics.get("training_iteration", 0)) for r in results if r.metrics))
    ray.shutdown()

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, ray {ray.__version__};"
          f" synthetic {args.rows} rows, {args.trials} trials x up to {args.epochs} epochs, target val_roc_auc >= "
          f"{args.target}, {args.seeds} seeds, {time.time() - started:.0f}s")
    print("| search | trial-epochs to target (per seed) | median | vs random | trial-epochs spent (median) |")
    print("|---|---|---|---|---|")
    baseline = statistics.median(counts["random, no early stopping"])
    for label in methods:
        median = statistics.median(counts[label])
        print(f"| {label} | {', '.join(f'{c:g}' for c in counts[label])} | {median:g} | {median / baseline:.2f} | "
              f"{statistics.median(totals[label]):g} |")


if __name__ == "__main__":
    main()
