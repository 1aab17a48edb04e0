"""A Ray Train worker killed mid-run: the run restarts its workers and finishes from the last checkpoint."""

import json
import signal
import threading
from pathlib import Path

import psutil
import pytest
import ray
from ray.util.state import list_actors

from ray_app.data.preprocess import prepare
from ray_app.train.trainer import train
from tests.conftest import small_config, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _registered_checkpoints(run_dir: Path) -> int:
    """How many checkpoints Train's controller has registered, from the snapshot it writes at each registration.

    A `checkpoint_*` folder appears when a worker uploads it, before the controller registers it: a worker killed
    in between restarts from the checkpoint before (or from scratch), which is what made this test flaky."""
    try:
        state = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    return state["current_report_index"] if state.get("latest_checkpoint_result") else 0


def _this_runs_workers() -> list[int]:
    """PIDs of the live Train workers of this driver's job (not of other runs on the machine)."""
    job = ray.get_runtime_context().get_job_id()
    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"), ("job_id", "=", job)])
    return [a.pid for a in actors if a.pid]


def test_killed_worker_resumes_from_last_checkpoint(paths):
    cfg = small_config(data={"synthetic": {"rows": 12000, "drift": 0.0}},
                       train={"epochs": 8, "batch_size": 8, "max_failures": 2})
    data = prepare(cfg.data, paths)
    run_name = "killed-worker"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = train(cfg, data, paths, run_name)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    run_dir = Path(paths.storage_path) / run_name
    registered = wait_until(lambda: _registered_checkpoints(run_dir), timeout=300, what="a registered checkpoint")
    victims = wait_until(_this_runs_workers, timeout=30, what="a Train worker of this run")
    psutil.Process(victims[-1]).send_signal(signal.SIGKILL)

    thread.join(timeout=480)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert registered < cfg.train.epochs, "the worker was killed after training had already finished"
    assert result.metrics["epoch"] == cfg.train.epochs - 1
    # epoch k's checkpoint is the (k + 1)-th registered: a restart from it starts at epoch k + 1
    assert result.metrics["resumed_from_epoch"] >= registered, "the restarted workers did not start from the " \
        f"last registered checkpoint ({registered} registered when the worker was killed)"
