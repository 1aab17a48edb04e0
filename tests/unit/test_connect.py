"""Which Ray a stage joins: RAY_ADDRESS, a running local cluster, or a private one; a dead cluster is one line."""

import os
import subprocess

from ray_app.config import RuntimePaths
from ray_app.connect import _answers
from tests.conftest import BIN, free_port


def test_a_cluster_that_does_not_answer_is_one_error_line_with_the_fix(tmp_path):
    port = free_port()  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_APP_HOME": str(tmp_path)}
    done = subprocess.run([str(BIN / "ray-app"), "ingest", "--set", "data.source=breast_cancer"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the Ray cluster at 127.0.0.1:{port} (RAY_ADDRESS) does not answer: start it (`make cluster-up`), "
        "or clear a dead session with `ray stop --force`, or run this stage on a private local Ray with --local "
        "(RAY_APP_LOCAL_RAY=1)")


def test_answers_tells_a_listening_port_from_a_closed_one():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert _answers(f"127.0.0.1:{server.getsockname()[1]}")
    assert not _answers(f"127.0.0.1:{free_port()}", timeout_s=1)
    assert not _answers("not-an-address")


def test_local_ray_is_asked_for_by_environment():
    assert RuntimePaths.resolve({"RAY_APP_LOCAL_RAY": "1"}).local_ray
    assert not RuntimePaths.resolve({}).local_ray
