"""A multi-node Ray cluster on this machine for the tests marked `cluster`: a head with no CPUs for work and three
worker nodes of 2 CPUs, started by the code behind `make cluster-up NODES=n` (ray_app/local_cluster.py).

These tests run in a pytest session of their own (`pytest -m cluster`, the second half of `make test`): a machine
runs one Ray cluster at a time, and the rest of the suite shares a one-node cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import BIN, ROOT, ray_processes, small_config

WORKER_NODES, CPUS_PER_NODE = 3, 2


@pytest.fixture(scope="session")
def cluster(app_home):
    """The running LocalCluster; stopped however the session ends (tests/session_reaper.py as in the suite)."""
    from ray_app.config import RuntimePaths
    from ray_app.local_cluster import free_ports, start_local_cluster, stop_local_cluster

    stray = ray_processes()
    if stray:
        pytest.exit(f"a Ray cluster is already running on this machine ({', '.join(stray)}): stop it with "
                    "`ray stop --force` (or `make cluster-down`) and run the tests again.", returncode=3)
    reaper = subprocess.Popen([sys.executable, str(ROOT / "tests" / "session_reaper.py"), str(os.getpid()),
                               str(BIN / "ray")], start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        head_port, dashboard_port = free_ports(2)
        local = start_local_cluster(RuntimePaths.resolve(), nodes=WORKER_NODES, cpus_per_node=CPUS_PER_NODE,
                                    object_store_mb=200, head_port=head_port, dashboard_port=dashboard_port)
        os.environ["RAY_DASHBOARD_ADDRESS"] = local.dashboard_url  # the rollout code and Serve's REST API
        yield local
    finally:
        stop_local_cluster(force=True)
        reaper.terminate()


@pytest.fixture(scope="session")
def spec(tmp_path_factory):
    """A small experiment every job of these tests runs: 2 training workers spread over nodes, 6 epochs."""
    cfg = small_config(data={"synthetic": {"rows": 1500, "drift": 0.0}},
                       train={"num_workers": 2, "epochs": 6, "batch_size": 32, "lr": 0.005, "cpus_per_worker": 1,
                              "placement_strategy": "SPREAD"})
    path = tmp_path_factory.mktemp("spec") / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path
