"""Will a stage's work fit on the cluster? Checked before the work starts, so that a job that cannot get its
resources says so, instead of waiting forever for a placement group that never comes.

A training run needs its workers' CPUs (and GPUs) plus one CPU for the Ray Data tasks that feed them: workers
holding every CPU starve Data, and that hangs too. What the cluster cannot give even when empty (and cannot grow to,
when an autoscaler may add nodes) stops the stage at once; what others hold now (a Serve app, another job) is
waited for, up to `--wait-for-resources` seconds, saying every so often what it waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ray_app.config import ExperimentConfig, UserError

DATA_CPUS = 1.0  # for the Ray Data tasks that feed training workers (see the module docstring)
WAIT_S = 300.0   # the default of --wait-for-resources
REPORT_EVERY_S = 30.0
KINDS = ("CPU", "GPU")


class ResourcesUnavailable(UserError):
    """The stage's work cannot get its resources: never on this cluster, or not within the wait."""


@dataclass(frozen=True)
class Need:
    """What a stage asks of the cluster at once, and in words."""

    what: str
    resources: dict[str, float]
    worker: dict[str, float] = field(default_factory=dict)  # one worker's share, which one node must hold


@dataclass
class ClusterView:
    """The cluster's resources now, who holds them, and how far it may grow (`ceiling`, when an autoscaler runs)."""

    total: dict[str, float]
    available: dict[str, float]
    holders: dict[str, float] = field(default_factory=dict)  # e.g. "Serve app `ab`" -> CPUs
    ceiling: dict[str, float] | None = None
    largest_node: dict[str, float] | None = None  # the most of each kind one node has (a worker cannot straddle)


def training_need(cfg: ExperimentConfig, stage: str = "training") -> Need:
    """A Ray Train run: its workers plus a CPU for Ray Data (and for tuning, the trial's own CPU)."""
    train = cfg.train
    cpus = train.num_workers * train.cpus_per_worker + DATA_CPUS
    workers = f"{train.num_workers} worker{'s' if train.num_workers != 1 else ''}"
    parts = [f"{workers} x {train.cpus_per_worker:g} CPU", f"{DATA_CPUS:g} CPU for Ray Data"]
    if stage == "tuning":
        cpus += cfg.tune.trial_cpus
        parts.append(f"{cfg.tune.trial_cpus:g} CPU for the trial")
    need = {"CPU": cpus, "GPU": float(train.num_workers) if train.use_gpu else 0.0}
    if train.use_gpu:
        parts.append(f"{train.num_workers} GPU")
    worker = {"CPU": train.cpus_per_worker, "GPU": 1.0 if train.use_gpu else 0.0}
    return Need(f"{stage} ({' + '.join(parts)})", need, worker)


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in KINDS if resources.get(k, 0.0) or k == "CPU")


def fits_now(need: Need, view: ClusterView) -> bool:
    return all(view.available.get(k, 0.0) + 1e-9 >= v for k, v in need.resources.items() if v > 0)


def never_fits(need: Need, view: ClusterView) -> bool:
    """True when even the whole cluster (grown to its ceiling, with an autoscaler) is too small."""
    limit = view.ceiling if view.ceiling is not None else view.total
    return any(limit.get(k, 0.0) + 1e-9 < v for k, v in need.resources.items() if v > 0) or _worker_too_big(
        need, view)


def _worker_too_big(need: Need, view: ClusterView) -> bool:
    """A worker larger than every node of a fixed-size cluster never gets placed (its placement group waits)."""
    if view.largest_node is None or view.ceiling is not None:
        return False
    return any(view.largest_node.get(k, 0.0) + 1e-9 < v for k, v in need.worker.items() if v > 0)


def explain(need: Need, view: ClusterView) -> str:
    """One line: the need, the cluster, who holds what, and what to change."""
    held = "; held by " + ", ".join(f"{who} {cpus:g} CPU" for who, cpus in sorted(
        view.holders.items(), key=lambda item: -item[1])) if view.holders else ""
    grows = f" (an autoscaler may grow it to {_fmt(view.ceiling)})" if view.ceiling is not None else ""
    if _worker_too_big(need, view):
        return (f"{need.what}: one worker needs {_fmt(need.worker)} on one node, and the largest node has "
                f"{_fmt(view.largest_node or {})}: lower train.cpus_per_worker or add larger nodes")
    if never_fits(need, view):
        advice = ("lower train.num_workers or train.cpus_per_worker (--set train.num_workers=1), or run on a larger "
                  "cluster")
    else:
        apps = [who.split("`")[1] for who in view.holders if who.startswith("Serve app `")]
        advice = (f"free resources (e.g. `serve delete {apps[0]}`), " if apps else "wait for other work to finish, ") \
            + "lower train.num_workers / train.cpus_per_worker, or add nodes"
    return (f"{need.what} needs {_fmt(need.resources)}; the cluster has {_fmt(view.total)}{grows}, "
            f"{_fmt(view.available)} free{held}: {advice}")


def cluster_view() -> ClusterView:
    """Read the connected cluster: totals, what is free, Serve apps and other jobs holding CPUs, autoscaling."""
    import ray

    total = {k: float(v) for k, v in ray.cluster_resources().items() if k in KINDS}
    available = {k: float(v) for k, v in ray.available_resources().items() if k in KINDS}
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    largest = {k: max((float(node.get(k, 0.0)) for node in nodes), default=0.0) for k in KINDS}
    return ClusterView(total, available, _holders(), _ceiling(), largest)


def _holders() -> dict[str, float]:
    """CPUs held by live actors, by Serve app or by job (needs the State API, which the dashboard serves)."""
    import ray
    from ray.util.state import list_actors

    try:
        actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                             raise_on_missing_output=False)
    except Exception:  # no dashboard, no State API: the line says less, the check still holds
        return {}
    me, held = ray.get_runtime_context().get_job_id(), {}
    for actor in actors:
        cpus = float((actor.required_resources or {}).get("CPU", 0.0))
        if cpus <= 0 or actor.job_id == me:
            continue
        name = actor.class_name or ""
        who = f"Serve app `{name.split(':')[1]}`" if name.startswith("ServeReplica:") else f"job {actor.job_id}"
        held[who] = held.get(who, 0.0) + cpus
    return held


def _ceiling() -> dict[str, float] | None:
    """The most resources an autoscaler may grow the cluster to, or None for a cluster of fixed size."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is None:
            return None
        return {k: float(v) for k in KINDS
                if (v := state._calculate_max_resource_from_cluster_config(config, k)) is not None}
    except Exception:
        return None


def require(need: Need, wait_s: float = WAIT_S, log: Callable[[str], None] = print,
            view: Callable[[], ClusterView] = cluster_view, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep, poll_s: float = 2.0) -> None:
    """Return once `need` fits now; raise `ResourcesUnavailable` at once if it never can, or after `wait_s`."""
    start, reported = clock(), None
    while True:
        current = view()
        if never_fits(need, current):  # first: a worker too big for every node fits the totals "now"
            raise ResourcesUnavailable(explain(need, current))
        if fits_now(need, current):
            return
        waited = clock() - start
        if waited >= wait_s:
            raise ResourcesUnavailable(f"waited {waited:.0f} s: {explain(need, current)}")
        if reported is None or clock() - reported >= REPORT_EVERY_S:
            log(f"[ray] waiting up to {wait_s:g} s for resources: {explain(need, current)}")
            reported = clock()
        sleep(poll_s)
