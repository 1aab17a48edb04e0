"""A multi-node Ray cluster on one machine, laid out as KubeRay lays one out (`make cluster-up NODES=n`).

A head that schedules no work (`--num-cpus=0`: the GCS, the dashboard with the Jobs API, the job drivers, Serve's
controller and a proxy) and n worker nodes joined with `ray start --address`, each its own raylet with its own CPUs,
object store and worker ports, all on 127.0.0.1 with token auth. Nodes share what the stages must share through
their environment, which every job and worker inherits, so a job needs no flags: `RAY_APP_HOME` (the MLflow store and
artifacts, the audit log, feedback) and `RAY_APP_STORAGE` as a `file://` URI (checkpoints and the split cache). On one
machine one folder is shared by construction; across machines it is a mount or an object store (README, clusters).

    python -m ray_app.local_cluster up --nodes 2      # what `make cluster-up NODES=2` runs
    python -m ray_app.local_cluster down
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray_app.config import RuntimePaths, UserError
from ray_app.connect import local_cpus

HEAD_PORT = 6379
DASHBOARD_PORT = 8265
MAX_WORKER_NODES = 8
# Each raylet hands out worker ports from its own range: raylets on one host do not see each other's ports.
HEAD_WORKER_PORTS = (10002, 10999)
WORKER_PORT_SPAN = 1000


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1, all bound at once: one socket at a time, the OS may hand the port
    just released to the next (`ray start` then refuses two components on one port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def shared_storage_uri(paths: RuntimePaths) -> str:
    """`RAY_APP_STORAGE` as every node should see it: a URI (a plain folder is refused on a multi-node cluster)."""
    if "://" in paths.storage_path:
        return paths.storage_path
    return Path(paths.storage_path).resolve().as_uri()


def node_environment(paths: RuntimePaths, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the nodes start with, and so every job driver, task and actor on them."""
    env = dict(os.environ if base is None else base)
    env.update(RAY_AUTH_MODE="token", RAY_APP_HOME=str(paths.home), RAY_APP_STORAGE=shared_storage_uri(paths))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # jobs run `ray-app` from it
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(frozen=True)
class WorkerNode:
    """One worker node: its name, its CPUs, and the raylet port that tells it apart from the others."""

    name: str
    cpus: int
    node_manager_port: int

    @property
    def temp_dir(self) -> str:
        """Its own session folder, as a machine of its own has: nodes sharing one unpack each job's working_dir
        over the others' (the first job on a fresh cluster lost its cwd) and each log monitor forwards every
        node's worker logs."""
        return os.path.join(tempfile.gettempdir(), f"ray-app-{self.name}")

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet, found by its port on the command line; None once it is gone."""
        import psutil

        flag = f"--node_manager_port={self.node_manager_port}"
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "raylet" and flag in (proc.info["cmdline"] or []):
                return proc.pid
        return None

    def kill(self) -> None:
        """SIGKILL the raylet, as a machine that loses power would: its workers and agents die with it."""
        pid = self.raylet_pid()
        if pid is None:
            raise RuntimeError(f"{self.name}: no raylet on port {self.node_manager_port}")
        os.kill(pid, signal.SIGKILL)


@dataclass
class LocalCluster:
    """A running local cluster: where to reach it, the environment its nodes share, and its worker nodes."""

    address: str
    dashboard_url: str
    env: dict[str, str]
    object_store_mb: int
    workers: list[WorkerNode] = field(default_factory=list)

    def add_worker(self, cpus: int, timeout_s: float = 180) -> WorkerNode:
        """Join one more worker node with `cpus` CPUs; return once the GCS counts it alive."""
        index = len(self.workers) + 1
        if index > MAX_WORKER_NODES:
            raise UserError(f"at most {MAX_WORKER_NODES} worker nodes on one machine (worker port ranges)")
        low = HEAD_WORKER_PORTS[1] + 1 + (index - 1) * WORKER_PORT_SPAN
        manager, objects, metrics, agent, agent_grpc, runtime_env = free_ports(6)
        node = WorkerNode(name=f"worker-{index}", cpus=cpus, node_manager_port=manager)
        _ray_start(self.env, timeout_s, f"--address={self.address}", "--node-ip-address=127.0.0.1",
                   f"--num-cpus={cpus}", f"--node-manager-port={manager}", f"--object-manager-port={objects}",
                   f"--metrics-export-port={metrics}", f"--dashboard-agent-listen-port={agent}",
                   f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
                   f"--min-worker-port={low}",
                   f"--max-worker-port={low + WORKER_PORT_SPAN - 1}",
                   f"--object-store-memory={self.object_store_mb * 1024**2}",
                   f"--resources={json.dumps({node.name: 1})}",
                   f"--temp-dir={node.temp_dir}")
        self.workers.append(node)
        deadline = time.monotonic() + timeout_s
        while not self._alive(node.name):
            if time.monotonic() > deadline:
                raise UserError(f"{node.name} did not join the cluster at {self.address} within {timeout_s:.0f} s")
            time.sleep(1)
        return node

    def _alive(self, name: str) -> bool:
        """Whether the GCS counts the node carrying resource `name` alive (State API)."""
        from ray.util.state import list_nodes

        return any(node.state == "ALIVE" and name in node.resources_total
                   for node in list_nodes(address=self.dashboard_url, limit=100))


def _ray_start(env: dict[str, str], timeout_s: float, *args: str) -> None:
    ray = Path(sys.executable).parent / "ray"
    done = subprocess.run([str(ray), "start", "--disable-usage-stats", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise UserError(f"`ray start {args[0]}` failed ({done.returncode}): "
                        f"{(done.stdout + done.stderr).strip()[-2000:]}")


def default_cpus_per_node(nodes: int) -> int:
    """The logical CPUs a private local Ray gets (`local_cpus`), shared out: at least 2 a node."""
    return max(2, math.ceil(local_cpus() / max(nodes, 1)))


def start_local_cluster(paths: RuntimePaths, nodes: int = 1, cpus_per_node: int | None = None,
                        object_store_mb: int = 300, head_port: int = HEAD_PORT,
                        dashboard_port: int = DASHBOARD_PORT, metrics_port: int | None = None,
                        base_env: dict[str, str] | None = None) -> LocalCluster:
    """Start the head and `nodes` worker nodes; with `nodes=0` the head does the work (`local_cpus()` CPUs)."""
    if not 0 <= nodes <= MAX_WORKER_NODES:
        raise UserError(f"NODES must be 0..{MAX_WORKER_NODES}, got {nodes}")
    env_in = os.environ if base_env is None else base_env
    if nodes and env_in.get("RAY_SERVE_ENABLE_HA_PROXY", "") not in ("", "0"):
        raise UserError("the HAProxy ingress runs on every node with replicas, and on one machine their stats and "
                        "metrics ports (8404, 9101) collide: use NODES=0 with INGRESS=haproxy")
    paths.ensure()
    env = node_environment(paths, base_env)
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60, check=True)
    _ray_start(env, 180, "--head", f"--port={head_port}", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--num-cpus={0 if nodes else local_cpus()}", f"--object-store-memory={object_store_mb * 1024**2}",
               f"--min-worker-port={HEAD_WORKER_PORTS[0]}", f"--max-worker-port={HEAD_WORKER_PORTS[1]}",
               *([f"--metrics-export-port={metrics_port}"] if metrics_port else []))
    cluster = LocalCluster(address=f"127.0.0.1:{head_port}", dashboard_url=f"http://127.0.0.1:{dashboard_port}",
                           env=env, object_store_mb=object_store_mb)
    cpus = cpus_per_node or default_cpus_per_node(nodes)
    for _ in range(nodes):
        cluster.add_worker(cpus)
    return cluster


def stop_local_cluster(force: bool = False, timeout_s: float = 180) -> None:
    """`ray stop`: every Ray process of this machine, head and workers (`force`: SIGKILL at once, which also hits any
    process with `monitor.py` in its command line)."""
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "stop", *(["--force"] if force else [])], capture_output=True, timeout=timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_app.local_cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start a head (no CPUs for work) and --nodes worker nodes on 127.0.0.1")
    up.add_argument("--nodes", type=int, default=1, help="worker nodes (0: the head does the work)")
    up.add_argument("--cpus-per-node", type=int, help="logical CPUs of each worker node "
                                                      "(default: max(6, cores) shared out, at least 2)")
    up.add_argument("--object-store-mb", type=int, default=300, help="object store of each node")
    sub.add_parser("down", help="stop every Ray node of this machine")
    args = parser.parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "token"  # read when Ray is imported; `ray start` clusters require the token
    if args.action == "down":
        stop_local_cluster()
        return 0
    paths = RuntimePaths.resolve()
    try:
        cluster = start_local_cluster(paths, args.nodes, args.cpus_per_node, args.object_store_mb)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Ray cluster at {cluster.address}, dashboard and Jobs API at {cluster.dashboard_url}")
    print("  head: no CPUs for work" if args.nodes else f"  head: {local_cpus()} CPUs")
    for node in cluster.workers:
        print(f"  {node.name}: {node.cpus} CPUs, {cluster.object_store_mb} MB object store")
    print(f"  shared: RAY_APP_HOME={cluster.env['RAY_APP_HOME']} RAY_APP_STORAGE={cluster.env['RAY_APP_STORAGE']}")
    print("then: export RAY_AUTH_MODE=token; ray job submit --working-dir . -- ray-app pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
