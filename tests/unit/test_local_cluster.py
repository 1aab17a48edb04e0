"""`make cluster-up`'s layout without starting Ray: what every node shares, how CPUs are shared out, what is refused."""

import pytest

from ray_app.config import RuntimePaths, UserError
from ray_app.local_cluster import WorkerNode, default_cpus_per_node, node_environment, start_local_cluster


def test_every_node_gets_the_shared_home_and_storage_as_a_uri(tmp_path):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    env = node_environment(paths, {"PATH": "/usr/bin", "RAY_ADDRESS": "10.0.0.1:6379"})
    assert env["RAY_APP_HOME"] == str(tmp_path.resolve())
    assert env["RAY_APP_STORAGE"] == (tmp_path.resolve() / "ray_results").as_uri()  # a plain folder is refused
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_ADDRESS" not in env
    assert env["PATH"].endswith("/usr/bin") and env["PATH"] != "/usr/bin"  # this venv's bin first: `ray-app`
    s3 = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path), "RAY_APP_STORAGE": "s3://bucket/ray"})
    assert node_environment(s3, {})["RAY_APP_STORAGE"] == "s3://bucket/ray"


def test_cpus_are_shared_out_at_least_two_a_node(monkeypatch):
    monkeypatch.setattr("ray_app.local_cluster.local_cpus", lambda: 6)
    assert [default_cpus_per_node(n) for n in (1, 2, 3, 4, 8)] == [6, 3, 2, 2, 2]


def test_each_worker_node_has_its_own_session_folder():
    first, second = WorkerNode("worker-1", 2, 40001), WorkerNode("worker-2", 2, 40002)
    assert first.temp_dir != second.temp_dir and first.temp_dir.endswith("ray-app-worker-1")


@pytest.mark.parametrize(("nodes", "env", "message"), [
    (9, {}, "NODES must be 0..8"),
    (-1, {}, "NODES must be 0..8"),
    (2, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}, "use NODES=0 with INGRESS=haproxy"),
])
def test_layouts_that_cannot_work_are_refused_before_anything_starts(tmp_path, nodes, env, message):
    paths = RuntimePaths.resolve({"RAY_APP_HOME": str(tmp_path)})
    with pytest.raises(UserError, match=message):
        start_local_cluster(paths, nodes=nodes, base_env=env)
    assert not (tmp_path / "ray_results").exists()  # refused before it created anything


def test_a_nodes_ports_are_distinct():
    from ray_app.local_cluster import free_ports

    for _ in range(50):
        ports = free_ports(6)
        assert len(set(ports)) == 6
