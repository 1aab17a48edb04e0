"""Ray Train with two workers, logged and registered in a real MLflow SQLite store."""

from pathlib import Path

import pandas as pd
import pytest
import yaml
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


def test_a_registered_version_carries_its_plots_spec_and_model_card(champion, paths, tmp_path):
    client = MlflowClient(paths.tracking_uri)
    run_id = champion.mlflow_run_id
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in ("roc", "pr", "confusion", "calibration", "training_curves",
                                                       "attributions")}
    for path in plots:
        assert Path(client.download_artifacts(run_id, path, str(tmp_path))).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path))).read_text()
    assert f"# {champion.model.name} version {champion.model.version}" in card
    assert champion.dataset_version in card and "95% bootstrap interval [" in card
    assert "![roc.png](plots/roc.png)" in card
    spec = yaml.safe_load(Path(client.download_artifacts(run_id, "experiment.yaml", str(tmp_path))).read_text())
    assert spec["train"]["num_workers"] == 2 and "ray-app train --spec experiment.yaml" in card
    attributions = pd.read_csv(client.download_artifacts(run_id, "attributions.csv", str(tmp_path)))
    shares = dict(zip(attributions["feature"], attributions["share"], strict=True))
    assert set(shares) == {*(f"x{i}" for i in range(6)), "segment", "channel"} and shares["x5"] < 0.2 * shares["x0"]
    assert f"| x0 | {attributions.set_index('feature').loc['x0', 'mean_abs_attribution']:.4f} |" in card
    version = client.get_model_version(champion.model.name, champion.model.version)
    assert f"runs:/{run_id}/model_card.md" in version.description


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
