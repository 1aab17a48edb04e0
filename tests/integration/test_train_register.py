"""Ray Train with two workers, logged and registered in a real MLflow SQLite store."""

import pytest
from mlflow.tracking import MlflowClient

from ray_app.registry import ModelRegistry
from tests.conftest import small_config

pytestmark = pytest.mark.timeout(600)


def test_registered_model_beats_the_trivial_baseline(champion):
    assert champion.holdout["roc_auc"] > champion.baseline["roc_auc"] + 0.25
    assert champion.holdout["accuracy"] > champion.baseline["accuracy"] + 0.15
    assert champion.train_metrics["epoch"] == 5


def test_run_records_params_metrics_lineage_and_model(champion, paths):
    client = MlflowClient(paths.tracking_uri)
    run = client.get_run(champion.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2" and run.data.params["model.width"] == "64"
    assert run.data.tags["dataset_version"] == champion.dataset_version
    assert len(run.data.tags["git_sha"]) in (40, len("unknown"))
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(champion.holdout["roc_auc"])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(6))

    registry = ModelRegistry(paths.tracking_uri)
    assert registry.resolve(f"models:/{champion.model.name}@champion") == champion.model
    bundle, ref = registry.load_bundle(champion.model.uri)
    assert ref.version == champion.model.version
    assert bundle.dataset_version["id"] == champion.dataset_version
    assert bundle.metrics["holdout_roc_auc"] == pytest.approx(champion.holdout["roc_auc"])
    assert bundle.reference_profile and set(bundle.schema.categorical) == {"segment", "channel"}
    version = client.get_model_version(champion.model.name, champion.model.version)
    assert version.run_id == champion.mlflow_run_id


@pytest.mark.slow
def test_regression_beats_the_mean(paths):
    from ray_app.pipeline import run_training

    cfg = small_config(data={"source": "diabetes", "task": "regression"},
                       model={"width": 32, "depth": 1, "dropout": 0.0},
                       train={"num_workers": 1, "epochs": 15, "batch_size": 32, "lr": 0.003},
                       registry={"model_name": "diabetes-test", "experiment": "diabetes-test"})
    report = run_training(cfg, paths)
    assert report.holdout["rmse"] < 0.85 * report.baseline["rmse"]
    assert report.holdout["mae"] < report.baseline["mae"]
