"""Faults injected into a serving A/B app on a multi-node cluster, and what the clients saw: used by the tests
marked `cluster` and by bench/faults.py (which runs them with and without the router's variant retries)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.conftest import LoadThreads

ROOT = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"\[[#-]{10}\] (\d+)/(\d+) train_loss")  # a training epoch's line (ray_app.console)


@dataclass
class Job:
    """A finished `ray job submit`: its submission id, the Ray job id of its driver, exit status and output."""

    submission_id: str
    job_id: str
    returncode: int
    output: str


def submit(cluster, *entrypoint: str, timeout: float = 600, wait: bool = True,
           env_vars: dict[str, str] | None = None) -> Job | str:
    """`ray job submit --working-dir <repo> -- <entrypoint>`, as the README says; with wait=False, the id only."""
    ray = Path(cluster.env["PATH"].split(os.pathsep)[0]) / "ray"
    extra = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    command = [str(ray), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT), *extra,
               *([] if wait else ["--no-wait"]), "--", *entrypoint]
    done = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    found = re.search(r"Job '(raysubmit_\w+)' submitted successfully", output)
    if not found:
        raise RuntimeError(f"ray job submit failed: {output[-3000:]}")
    if not wait:
        return found.group(1)
    return Job(found.group(1), job_id_of(cluster, found.group(1)), done.returncode, output)


def job_id_of(cluster, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard_url).get_job_info(submission_id).job_id


def node_names(dashboard_url: str) -> dict[str, str]:
    """Node id -> `head` or the worker's name (each worker node carries a resource named after it)."""
    from ray.util.state import list_nodes

    names = {}
    for node in list_nodes(address=dashboard_url, limit=100):
        workers = [key for key in node.resources_total if key.startswith("worker-")]
        names[node.node_id] = workers[0] if workers else "head"
    return names


def actor_nodes(dashboard_url: str, job_id: str, class_name: str, alive_only: bool = False) -> list[str]:
    """The node (by name) of every actor of that class the job started, dead or alive."""
    from ray.util.state import list_actors

    filters = [("job_id", "=", job_id), ("class_name", "=", class_name)]
    if alive_only:
        filters.append(("state", "=", "ALIVE"))
    names = node_names(dashboard_url)
    return [names.get(actor.node_id, actor.node_id) for actor in
            list_actors(address=dashboard_url, filters=filters, limit=1000, raise_on_missing_output=False)]


def app_replicas(dashboard_url: str, app: str = "ab") -> list[tuple[str, str, int]]:
    """A Serve app's live replicas: (deployment, node name, pid)."""
    from ray.util.state import list_actors

    names = node_names(dashboard_url)
    return [(actor.class_name.split(":")[2], names.get(actor.node_id, "?"), actor.pid)
            for actor in list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                                     limit=1000, raise_on_missing_output=False)
            if (actor.class_name or "").startswith(f"ServeReplica:{app}:")]


def replicated_ab_config(folder: Path, replicas: int, variant_retries: int = 2) -> Path:
    """serve_configs/ab.yaml with `replicas` of the router and of each variant (as a multi-node deployment sets),
    both variants on the champion (one registered version) and no drift monitor."""
    config = yaml.safe_load((ROOT / "serve_configs" / "ab.yaml").read_text())
    app = config["applications"][0]
    app["args"].update(variants={"champion": "models:/ray-app-model@champion",
                                 "challenger": "models:/ray-app-model@champion"},
                       monitor={"enabled": False}, variant_retries=variant_retries)
    app["deployments"][0]["num_replicas"] = replicas
    app["deployments"] += [{"name": f"variant-{name}", "num_replicas": replicas} for name in ("champion", "challenger")]
    path = folder / f"ab-{replicas}x-retries{variant_retries}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve_cli(env: dict[str, str], *args: str) -> str:
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    done = subprocess.run([str(bin_dir / "serve"), *args], env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"serve {args[0]} failed: {(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


class Traffic(LoadThreads):
    """Clients posting /predict in a loop, each request's (time, outcome) kept: 200, a status, or `conn`."""

    def __init__(self, url: str, row: dict, clients: int = 4):
        super().__init__(clients)
        self.url, self.row = url, row
        self.results: list[tuple[float, str]] = []

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                headers = {"x-user-id": uuid.uuid4().hex}
                try:
                    status = str(client.post(self.url, json={"instances": [self.row]}, headers=headers).status_code)
                except httpx.HTTPError:
                    status = "conn"
                self.results.append((time.monotonic(), status))


@dataclass
class FaultOutcome:
    """One fault under load: requests sent until the next fault, those that failed, seconds to the last failure."""

    what: str
    node: str
    sent: int
    failed: list[str]
    recovered_s: float


def _outcome(what: str, node: str, results: list[tuple[float, str]], start: float, end: float) -> FaultOutcome:
    window = [(t - start, s) for t, s in results if start <= t < end]
    failed = [(t, s) for t, s in window if s != "200"]
    return FaultOutcome(what, node, len(window), [s for _, s in failed], max((t for t, _ in failed), default=0.0))


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def serving_faults(cluster, row: dict, url: str, replicas: int = 6, clients: int = 4, variant_kills: int = 1,
                   settle_s: float = 12, node_s: float = 40) -> tuple[list[FaultOutcome], list[str]]:
    """Under load from `clients`: `variant_kills` variant replicas SIGKILLed one after another, then a router
    replica, then the worker node holding the most replicas (its raylet). Returns each fault's outcome and the
    requests sent before the first fault."""
    dashboard = cluster.dashboard_url
    faults: list[tuple[str, str, float]] = []
    with Traffic(url, row, clients) as traffic:
        time.sleep(6)
        for deployment in ["variant-champion"] * variant_kills + ["ABRouter"]:
            _, node, pid = next(r for r in app_replicas(dashboard) if r[0] == deployment)
            faults.append((f"{'router' if deployment == 'ABRouter' else 'variant'} replica killed", node,
                           time.monotonic()))
            os.kill(pid, signal.SIGKILL)
            time.sleep(settle_s)
            _wait(lambda: len(app_replicas(dashboard)) == replicas, 120, "the replica replaced")
        placed = [node for _, node, _ in app_replicas(dashboard)]
        victim = max(set(placed), key=placed.count)
        faults.append((f"node killed ({placed.count(victim)} of {replicas} replicas)", victim, time.monotonic()))
        next(node for node in cluster.workers if node.name == victim).kill()
        time.sleep(node_s)
        ended = time.monotonic()
    ends = [at for _, _, at in faults[1:]] + [ended]
    outcomes = [_outcome(what, node, traffic.results, at, end)
                for (what, node, at), end in zip(faults, ends, strict=True)]
    return outcomes, [s for t, s in traffic.results if t < faults[0][2]]


@dataclass
class TrainingFault:
    """A worker node killed under a training job: where, after which epoch, the epochs printed, how it ended."""

    node: str
    killed_after: int
    epochs: list[int]
    finished_s: float
    status: str
    logs: str
    workers: list[str]

    @property
    def resumed_at(self) -> int | None:
        """The first epoch printed after the restart (None: no restart)."""
        return next((self.epochs[i] for i in range(1, len(self.epochs)) if self.epochs[i] <= self.epochs[i - 1]),
                    None)

    @property
    def redone(self) -> int:
        """Epochs trained again after the restart: those finished after the last checkpoint it resumed from."""
        if self.resumed_at is None:
            return 0
        restart = next(i for i in range(1, len(self.epochs)) if self.epochs[i] <= self.epochs[i - 1])
        return self.epochs[restart - 1] - self.resumed_at + 1


def node_killed_mid_training(cluster, entrypoint: list[str], after_epochs: int = 2,
                             timeout_s: float = 600) -> TrainingFault:
    """Submit a training job, SIGKILL the raylet of a node one of its workers is on once `after_epochs` epochs
    were printed, and wait for the job to end."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    submission = submit(cluster, *entrypoint, wait=False)
    _wait(lambda: job_id_of(cluster, submission), 60, "the job's driver")
    job_id = job_id_of(cluster, submission)

    def printed() -> list[int]:
        return [int(m.group(1)) for m in PROGRESS.finditer(client.get_job_logs(submission))]

    _wait(lambda: len(printed()) >= after_epochs, 300, f"{after_epochs} epochs")
    victim = actor_nodes(cluster.dashboard_url, job_id, "RayTrainWorker", alive_only=True)[0]
    killed_after, killed_at = max(printed()), time.monotonic()
    next(node for node in cluster.workers if node.name == victim).kill()
    _wait(lambda: client.get_job_status(submission).is_terminal(), timeout_s, "the training job to end")
    logs = client.get_job_logs(submission)
    return TrainingFault(victim, killed_after, [int(m.group(1)) for m in PROGRESS.finditer(logs)],
                         time.monotonic() - killed_at, str(client.get_job_status(submission)), logs,
                         actor_nodes(cluster.dashboard_url, job_id, "RayTrainWorker"))
