"""Faults on a multi-node cluster on this machine (a head with no CPUs + 3 worker nodes of 2 CPUs): what clients of
the A/B app see when a variant replica, a router replica or a whole worker node is SIGKILLed under load, with the
router's variant retries off (the baseline) and on (the default), in one run; and a node killed mid-training.

    python bench/faults.py [--variant-kills 5] [--clients 4]

Needs no running cluster (it starts and stops its own; refuses if one runs). Prints a table; bench/RESULTS.md keeps it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["RAY_AUTH_MODE"] = "token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant-kills", type=int, default=5, help="variant replicas killed, one after another")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    import httpx
    import yaml

    from ray_app.config import ExperimentConfig, RuntimePaths
    from ray_app.local_cluster import start_local_cluster, stop_local_cluster
    from tests.multinode.faults import (
        app_replicas,
        node_killed_mid_training,
        replicated_ab_config,
        serve_cli,
        serving_faults,
        submit,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    os.environ["RAY_APP_HOME"] = str(work / "home")
    os.environ.pop("RAY_APP_STORAGE", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = ExperimentConfig(name="faults").with_overrides(
        data={"synthetic": {"rows": 1500, "drift": 0.0}},
        train={"num_workers": 2, "epochs": 6, "batch_size": 32, "lr": 0.005, "placement_strategy": "SPREAD"})
    spec = work / "spec.yaml"
    spec.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cluster = start_local_cluster(RuntimePaths.resolve(), nodes=3, cpus_per_node=2, object_store_mb=200)
    rows = []
    try:
        job = submit(cluster, "ray-app", "pipeline", "--spec", str(spec))
        assert job.returncode == 0, job.output[-3000:]
        url = "http://127.0.0.1:8000"
        for retries in (0, 2):
            serve_cli(cluster.env, "deploy", "--address", cluster.dashboard_url,
                      str(replicated_ab_config(work, replicas=2, variant_retries=retries)))
            deadline = time.monotonic() + 300
            while len(app_replicas(cluster.dashboard_url)) < 6 or not _ok(f"{url}/schema"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the A/B app did not come up")
                time.sleep(1)
            schema = httpx.get(f"{url}/schema", timeout=10).json()["schema"]
            row = {name: 0.1 for name in schema["numeric"]}
            row.update({name: values[0] for name, values in schema["categorical"].items()})
            outcomes, _ = serving_faults(cluster, row, f"{url}/predict", clients=args.clients,
                                         variant_kills=args.variant_kills, settle_s=8)
            serve_cli(cluster.env, "shutdown", "--address", cluster.dashboard_url, "-y")
            cluster.add_worker(2)
            variant = [o for o in outcomes if o.what.startswith("variant")]
            rows.append((retries, f"variant replica killed (x{len(variant)})", sum(o.sent for o in variant),
                         sum(len(o.failed) for o in variant), max(o.recovered_s for o in variant)))
            for o in outcomes[len(variant):]:
                rows.append((retries, o.what.split(" (")[0], o.sent, len(o.failed), o.recovered_s))
        training = node_killed_mid_training(cluster, ["ray-app", "train", "--spec", str(spec), "--run-name", "k"])
    finally:
        stop_local_cluster(force=True)
    print(f"\nfaults under load ({args.clients} clients, /predict), head + 3 worker nodes of 2 CPUs on one machine")
    print(f"{'fault':34} {'retries':>7} {'requests':>9} {'failed':>7} {'all ok after':>13}")
    for retries, what, sent, failed, recovered in rows:
        print(f"{what:34} {retries:>7} {sent:>9} {failed:>7} {recovered:>11.1f} s")
    base = {what: failed for r, what, _, failed, _ in rows if r == 0}
    for what, failed in ((w, f) for r, w, _, f, _ in rows if r == 2):
        print(f"  {what}: {failed} failed with retries vs {base[what]} without")
    print(f"node killed mid-training ({training.node} after epoch {training.killed_after} of 6): {training.status}, "
          f"epochs printed {training.epochs}, {training.redone} redone, ended {training.finished_s:.0f} s after")


def _ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
