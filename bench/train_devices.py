"""Ray Train on CPU versus GPU: the same config with `use_gpu` false and true, in one run.

Trains the tabular MLP on the synthetic set with one Ray Train worker per device kind and prints seconds per
epoch and the final validation metrics; the CPU run is the baseline of the ratio. On a machine without a GPU
only the CPU row is printed. No MLflow here: this checks and times the `use_gpu` path of the trainer alone.

    python bench/train_devices.py [--rows 50000] [--epochs 4] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()

    import ray
    import torch

    from ray_app.config import ExperimentConfig, RuntimePaths
    from ray_app.data.preprocess import prepare
    from ray_app.train.trainer import train

    home = tempfile.mkdtemp(prefix="ray_app_bench_")
    paths = RuntimePaths.resolve({"RAY_APP_HOME": home}).ensure()
    gpus = torch.cuda.device_count()
    ray.init(num_cpus=max(4, os.cpu_count() or 1), num_gpus=gpus, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = ExperimentConfig(name="devices").with_overrides(
        data={"synthetic": {"rows": args.rows, "drift": 0.0}},
        model={"width": args.width, "depth": 3, "dropout": 0.1},
        train={"num_workers": 1, "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.003},
    )
    data = prepare(cfg.data, paths.data_dir)
    rows = []
    for use_gpu in ([False, True] if gpus else [False]):
        run_cfg = cfg.with_overrides(train={"use_gpu": use_gpu})
        start = time.perf_counter()
        outcome = train(run_cfg, data, paths, run_name=f"devices-{'gpu' if use_gpu else 'cpu'}")
        seconds = time.perf_counter() - start
        rows.append(("gpu" if use_gpu else "cpu", seconds, outcome.metrics))
    ray.shutdown()

    device = torch.cuda.get_device_name(0) if gpus else "none"
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, GPU: {device}, torch {torch.__version__}, "
          f"ray {ray.__version__}; {args.rows} rows, {args.epochs} epochs, batch {args.batch_size}, "
          f"width {args.width}x3, 1 worker")
    print("| device | wall s (incl. worker start) | val_accuracy | val_roc_auc | time vs cpu |")
    print("|---|---|---|---|---|")
    for name, seconds, metrics in rows:
        print(f"| {name} | {seconds:.1f} | {metrics['val_accuracy']:.3f} | {metrics['val_roc_auc']:.3f} | "
              f"{seconds / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
