"""Tuning specs: bad ranges and unknown distributions are clear errors; trials fit the cluster."""

from pathlib import Path

import pytest

from ray_app.config import ConfigError, ExperimentConfig
from ray_app.tune.search import apply_params, max_concurrent_trials, objective

ROOT = Path(__file__).resolve().parents[2]


def spec(tmp_path: Path, text: str) -> ExperimentConfig:
    path = tmp_path / "tune.yaml"
    path.write_text(text)
    return ExperimentConfig.from_yaml(path)


@pytest.mark.parametrize(("space", "message"), [
    ("train.lr: {type: loguniform, low: 0.1, high: 0.01}", "low (0.1) must be below high (0.01)"),
    ("train.lr: {type: loguniform, low: 0, high: 0.01}", "loguniform needs low > 0"),
    ("train.lr: {type: gaussian, low: 0, high: 1}", "tune.space.train.lr.type"),
    ("model.width: {type: choice, values: []}", "non-empty `values`"),
    ("model.depth: {type: randint, low: 2}", "randint needs `low` and `high`"),
    ("train.momentum: {type: uniform, low: 0, high: 1}", "cannot tune train.momentum"),
])
def test_bad_search_space_is_named(tmp_path, space, message):
    with pytest.raises(ConfigError) as err:
        spec(tmp_path, f"tune:\n  space:\n    {space}\n")
    assert message in str(err.value) and "tune.yaml" in str(err.value)


def test_grid_needs_choices(tmp_path):
    with pytest.raises(ConfigError, match="grid needs every dimension"):
        spec(tmp_path, "tune:\n  algorithm: grid\n  space:\n    train.lr: {type: uniform, low: 0.1, high: 0.2}\n")


def test_shipped_tuning_spec_and_params():
    cfg = ExperimentConfig.from_yaml(ROOT / "tuning" / "tune_synthetic.yaml")
    tuned = apply_params(cfg, {"model.width": 63.6, "train.lr": 0.01, "train.batch_size": 128})
    assert (tuned.model.width, tuned.train.lr, tuned.train.batch_size) == (64, 0.01, 128)
    assert objective(cfg, "classification") == ("val_roc_auc", "max")
    assert objective(ExperimentConfig(), "regression") == ("val_rmse", "min")


def test_concurrency_fits_trial_and_workers():
    cfg = ExperimentConfig().with_overrides(train={"num_workers": 2, "cpus_per_worker": 0.5},
                                            tune={"trial_cpus": 0.25})
    assert max_concurrent_trials(cfg, {"CPU": 4}) == 2  # 1.25 CPU a trial, 1 CPU left for Ray Data
    assert max_concurrent_trials(cfg.with_overrides(tune={"max_concurrent": 1}), {"CPU": 4}) == 1
    with pytest.raises(ValueError, match="one trial needs 1.25 CPUs"):
        max_concurrent_trials(cfg, {"CPU": 1})
    gpu = cfg.with_overrides(train={"use_gpu": True, "num_workers": 1})
    assert max_concurrent_trials(gpu, {"CPU": 16, "GPU": 2}) == 2
