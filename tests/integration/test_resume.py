"""A Ray Train worker killed mid-run: the run restarts its workers and finishes from the last checkpoint."""

import signal
import threading
from pathlib import Path

import psutil
import pytest

from ray_app.data.preprocess import prepare
from ray_app.train.trainer import train
from tests.conftest import small_config, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _train_worker_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        if "RayTrainWorker" in title:
            found.append(proc)
    return found


def test_killed_worker_resumes_from_last_checkpoint(paths):
    cfg = small_config(data={"synthetic": {"rows": 12000, "drift": 0.0}},
                       train={"epochs": 8, "batch_size": 8, "max_failures": 2})
    data = prepare(cfg.data, paths.data_dir)
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
    # The second checkpoint folder appears only after the first one has been registered.
    wait_until(lambda: len(list(run_dir.glob("checkpoint_*"))) >= 2, timeout=300, what="two checkpoints")
    victims = wait_until(_train_worker_processes, timeout=30, what="a Ray Train worker process")
    victims[-1].send_signal(signal.SIGKILL)
    killed_at = len(list(run_dir.glob("checkpoint_*")))

    thread.join(timeout=480)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.metrics["epoch"] == cfg.train.epochs - 1
    assert result.metrics["resumed_from_epoch"] >= 1, "the restarted workers started from scratch"
    assert killed_at < cfg.train.epochs, "the worker was killed after training had already finished"
