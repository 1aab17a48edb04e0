"""Ray Tune over Ray Train on the shared cluster: nested MLflow runs, a challenger, and resume."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ray_app.registry import ModelRegistry
from ray_app.tune.search import run_tuning
from tests.conftest import BIN, small_config, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NAME = "tune-test"


def tune_config(**tune):
    return small_config(
        registry={"model_name": NAME, "experiment": NAME},
        data={"synthetic": {"rows": 1000, "drift": 0.0}},
        train={"num_workers": 1, "cpus_per_worker": 0.5, "epochs": 2, "batch_size": 64},
        tune={"space": {"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.03},
                        "model.width": {"type": "choice", "values": [16, 32]}},
              "num_samples": 3, "trial_cpus": 0.25, "grace_period": 1, **tune},
    )


def child_runs(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_tiny_tune_logs_nested_runs_and_registers_a_challenger(paths):
    report = run_tuning(tune_config(cv=2), paths, name="tune-tiny")
    client = MlflowClient(paths.tracking_uri)
    children = child_runs(client, report.mlflow_run_id)
    assert report.trials == 3 and len(children) == 3
    for run in children:
        assert "train.lr" in run.data.params and "val_roc_auc" in run.data.metrics
        steps = client.get_metric_history(run.info.run_id, "val_roc_auc")
        assert 1 <= len(steps) <= 2
    assert report.best_metric == max(r.data.metrics["val_roc_auc"] for r in children)
    assert 3 <= report.trial_epochs <= 6
    registry = ModelRegistry(paths.tracking_uri)
    assert registry.alias_version(NAME, "challenger") == report.model.version
    assert registry.alias_version(NAME, "champion") is None
    parent = client.get_run(report.mlflow_run_id)
    assert parent.data.params["best.train.lr"] == str(report.best_params["train.lr"])
    assert len(report.cv.values) == 2 and all(0.5 < v <= 1.0 for v in report.cv.values)
    assert parent.data.metrics["cv_mean_val_roc_auc"] == pytest.approx(report.cv.mean)
    assert parent.data.metrics["cv_std_val_roc_auc"] == pytest.approx(report.cv.std)


def test_killed_search_resumes_without_rerunning_finished_trials(paths, tmp_path):
    cfg = tune_config(num_samples=4, max_concurrent=1, scheduler="none")
    spec = tmp_path / "tune.yaml"
    spec.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [str(BIN / "ray-app"), "tune", "--spec", str(spec), "--name", "tune-resume"]
    client = MlflowClient(paths.tracking_uri)

    def finished_trials() -> set[str]:
        """Trials that Tune's own saved search state records as finished."""
        states = sorted((Path(paths.storage_path) / "tune-resume").glob("experiment_state-*.json"))
        if not states:
            return set()
        try:
            trials = [json.loads(row[0]) for row in json.loads(states[-1].read_text())["trial_data"]]
        except (json.JSONDecodeError, KeyError):
            return set()  # caught mid-write
        return {f"tune_trial_{t['trial_id']}" for t in trials if t["status"] == "TERMINATED"}

    first = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = wait_until(lambda: done if len(done := finished_trials()) >= 2 else None, timeout=600,
                            what="two finished trials")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    resumed = subprocess.run([*command, "--resume"], env=dict(os.environ), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]

    parent = client.search_runs([ModelRegistry(paths.tracking_uri).experiment_id(NAME)],
                                "tags.tune_run = 'tune-resume'")
    assert len(parent) == 1, "the resumed search opened a second parent run"
    names = [r.info.run_name for r in child_runs(client, parent[0].info.run_id)]
    assert len(set(names)) == 4, names
    for name in before:
        assert names.count(name) == 1, f"finished trial {name} ran again"
