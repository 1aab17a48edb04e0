"""What a registered version shows people: plots, training curves, a bootstrap interval and the model card."""

import numpy as np
import pandas as pd
import pytest

from ray_app.reports import (
    ModelFacts,
    attribution_chart,
    bootstrap_interval,
    classification_plots,
    model_card,
    regression_plots,
    training_curves,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _scores(classes: int, n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 2.0 * np.eye(classes)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_plots_are_pngs(classes):
    y, proba = _scores(classes)
    plots = classification_plots(y, proba, [f"c{k}" for k in range(classes)])
    assert set(plots) == {"roc.png", "pr.png", "confusion.png", "calibration.png"}
    assert all(png.startswith(PNG) and len(png) > 5000 for png in plots.values())


def test_a_holdout_with_one_class_still_plots():
    plots = classification_plots(np.zeros(50, dtype=int), np.tile([0.7, 0.3], (50, 1)), ["a", "b"])
    assert all(png.startswith(PNG) for png in plots.values())


def test_regression_and_training_curves_are_pngs():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    assert regression_plots(y, y + rng.normal(scale=0.1, size=300))["residuals.png"].startswith(PNG)
    curves = training_curves({"train_loss": [(0, 0.7), (1, 0.4)], "val_roc_auc": [(0, 0.8), (1, 0.9)]})
    assert curves.startswith(PNG)
    table = pd.DataFrame({"feature": ["x0", "x1"], "mean_abs_attribution": [0.3, 0.1], "share": [0.75, 0.25]})
    assert attribution_chart(table, "m version 1").startswith(PNG)


def test_bootstrap_interval_brackets_the_metric():
    from sklearn.metrics import roc_auc_score

    y, proba = _scores(2, n=2000)
    metric, low, high = bootstrap_interval("classification", y, proba)
    point = roc_auc_score(y, proba[:, 1])
    assert metric == "roc_auc" and low < point < high and 0.005 < high - low < 0.1
    perfect = np.eye(2)[y]
    assert bootstrap_interval("classification", y, perfect)[1:] == (1.0, 1.0)
    _, low, high = bootstrap_interval("regression", y.astype(float), y + 0.5)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_the_model_card_says_what_the_version_is_and_how_to_reproduce_it():
    facts = ModelFacts(name="m", version="3", run_id="abc", task="classification", label="churned",
                       classes=["no", "yes"], dataset_version="dv1", source="data/*.parquet", git_sha="1234567",
                       params={"train.lr": 0.01}, holdout={"roc_auc": 0.91, "accuracy": 0.85},
                       baseline={"roc_auc": 0.5, "accuracy": 0.6}, holdout_rows=800,
                       interval=("roc_auc", 0.89, 0.93), spec_artifact="experiment.yaml",
                       attributions=[("x0", 0.21, 0.7), ("segment", 0.09, 0.3)])
    card = model_card(facts, ["confusion.png", "roc.png"])
    assert card.startswith("# m version 3\n")
    for text in ("label `churned` (no, yes)", "DatasetVersion `dv1`", "commit `1234567`",
                 "roc_auc 0.9100, 95% bootstrap interval [0.8900, 0.9300]", "| accuracy | 0.6000 |",
                 "| train.lr | 0.01 |", "![roc.png](plots/roc.png)", "git checkout 1234567",
                 "--run-id abc --artifact-path experiment.yaml", "ray-app train --spec experiment.yaml",
                 "| x0 | 0.2100 | 0.700 |", "| segment | 0.0900 | 0.300 |"):
        assert text in card, text
