"""Which Ray a stage runs on: the cluster in `RAY_ADDRESS` (as under `ray job submit`), else a local cluster that
`ray start` left running (joined on purpose, and said so), else a private local instance on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import sys

from ray_app.config import RuntimePaths, UserError
from ray_app.console import quiet_loggers, route_worker_output

FIX = ("start it (`make cluster-up`), or clear a dead session with `ray stop --force`, or run this stage on a "
       "private local Ray with --local (RAY_APP_LOCAL_RAY=1)")


# Logical CPUs of a Ray this project starts on one machine (a private one, `make cluster-up`, the tests' cluster):
# at least 6, so the A/B app (1.35 CPU) and a default 2-worker training run (2 CPU + 1 for Ray Data) fit together
# on a 2-core laptop. The work is small; the count is what Ray schedules by, not what the cores can do.
MIN_LOCAL_CPUS = 6


def local_cpus() -> int:
    return max(MIN_LOCAL_CPUS, os.cpu_count() or 1)


class RayUnavailable(UserError):
    """The cluster to join does not answer, or its processes run from an installation that is gone."""


def running_local_cluster() -> str | None:
    """The GCS address that the last `ray start` on this machine wrote (`ray stop` removes it), if any."""
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None) or None


def _answers(address: str, timeout_s: float = 3.0) -> bool:
    host, _, port = address.rpartition("://")[2].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _orphaned_daemons() -> list[str]:
    """Local Ray daemons whose executable was deleted (their virtualenv is gone): they accept connections but
    cannot start a worker, so a stage would hang. Linux only; elsewhere nothing is found."""
    orphans = []
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        name = os.path.basename(exe.removesuffix(" (deleted)"))
        if name in ("raylet", "gcs_server") and exe.endswith(" (deleted)"):
            orphans.append(f"{name} ({pid})")
    return orphans


def connect_ray(paths: RuntimePaths, dashboard: bool = False) -> str:
    """Connect this process to Ray and return where it runs. Tuning starts its private Ray with the dashboard:
    it hosts the State API that releases the placement group of a trial ASHA stopped (without it the next
    trials wait forever)."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return "the Ray this process already joined"
    if paths.log_file is not None:
        quiet_loggers(paths.log_file)  # what importing Ray added: ray.init logs too
    address, source = None, ""
    if not paths.local_ray:
        if paths.ray_address:
            address, source = paths.ray_address, "RAY_ADDRESS"
        elif found := running_local_cluster():
            address, source = found, "a local cluster started by `ray start`"
    if address and address != "local":
        if address != "auto" and not address.startswith("ray://") and not _answers(address):
            raise RayUnavailable(f"the Ray cluster at {address} ({source}) does not answer: {FIX}")
        if source != "RAY_ADDRESS" and (orphans := _orphaned_daemons()):
            raise RayUnavailable(f"the local Ray cluster at {address} runs from a deleted installation "
                                 f"({', '.join(orphans)}): {FIX}")
        ray.init(address=address, logging_level=logging.WARNING)
        where = f"the Ray cluster at {address} ({source})"
    else:
        ray.init(address="local", num_cpus=local_cpus(), include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
                 object_store_memory=paths.object_store_mb * 1024**2 if paths.object_store_mb else None)
        where = "a private local Ray on 127.0.0.1"
    print(f"[ray] running on {where}", file=sys.stderr)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if paths.log_file is not None:
        quiet_loggers(paths.log_file)  # what importing Ray Data added
        route_worker_output(paths.log_file)
    return where
