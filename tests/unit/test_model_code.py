"""The gate's statistics and checks, the metric definitions, model URIs and the bundle format: fast, no Ray."""

import math

import numpy as np
import pandas as pd
import pytest

from ray_app.config import UserError
from ray_app.data.preprocess import FEATURES_COLUMN, TargetEncoding
from ray_app.gate import Scored, _bound_check, paired_bootstrap
from ray_app.metrics import baseline_metrics, classification_metrics, metric_value, regression_metrics
from ray_app.package import FeatureSchema, ModelBundle
from ray_app.registry import parse_model_uri
from ray_app.train.model import MLPSpec, TabularMLP


def _scored(rng, n=400, noise=0.3):
    y = rng.integers(0, 2, n)
    p1 = np.clip(y + rng.normal(0, noise, n), 0.01, 0.99)
    return y, np.column_stack([1 - p1, p1])


def test_paired_bootstrap_is_paired_seeded_and_signed():
    rng = np.random.default_rng(0)
    y, good = _scored(rng, noise=0.2)
    _, bad = _scored(np.random.default_rng(1), noise=0.9)
    a, b = Scored(y, good), Scored(y, bad[: len(y)])
    same = paired_bootstrap("accuracy", a, Scored(y, good.copy()), samples=50)
    assert len(same) == 50 and np.all(same == 0)  # one index set for both: identical models never differ
    diffs = paired_bootstrap("roc_auc", a, b, samples=200, seed=3)
    assert diffs.mean() > 0 and np.quantile(diffs, 0.025) > 0
    assert np.array_equal(diffs, paired_bootstrap("roc_auc", a, b, samples=200, seed=3))
    assert np.all(paired_bootstrap("roc_auc", b, a, samples=200, seed=3) == -diffs)


def test_paired_bootstrap_on_a_bounded_subsample():
    rng = np.random.default_rng(0)
    y, good = _scored(rng, n=4000, noise=0.4)
    _, bad = _scored(np.random.default_rng(1), n=4000, noise=0.6)
    a, b = Scored(y, good), Scored(y, bad)
    whole = paired_bootstrap("accuracy", a, b, samples=200, seed=3)
    sub = paired_bootstrap("accuracy", a, b, samples=200, seed=3, max_rows=400)
    assert np.array_equal(sub, paired_bootstrap("accuracy", a, b, samples=200, seed=3, max_rows=400))
    assert np.std(sub) > 2 * np.std(whole)  # ten times fewer rows: a CI about three times wider
    assert abs(sub.mean() - whole.mean()) < 4 * np.std(sub)
    assert np.array_equal(paired_bootstrap("accuracy", a, b, samples=50, seed=1, max_rows=10_000),
                          paired_bootstrap("accuracy", a, b, samples=50, seed=1))  # more than n: all rows


def test_paired_bootstrap_drops_resamples_where_the_metric_is_undefined():
    y = np.array([0] * 99 + [1])
    out = np.column_stack([np.full(100, 0.5), np.full(100, 0.5)])
    diffs = paired_bootstrap("roc_auc", Scored(y, out), Scored(y, out), samples=100, seed=0)
    assert 0 < len(diffs) < 100 and np.all(np.isfinite(diffs))  # resamples without the one positive are gone


def test_bound_checks_follow_the_metric_direction():
    assert _bound_check("floor roc_auc", "roc_auc", 0.8, 0.7, "0.8").passed
    assert not _bound_check("floor roc_auc", "roc_auc", 0.6, 0.7, "0.6").passed
    assert _bound_check("floor rmse", "rmse", 0.6, 0.7, "0.6").passed
    check = _bound_check("floor rmse", "rmse", 0.8, 0.7, "0.8")
    assert not check.passed and check.threshold == "<= 0.7"


def test_multiclass_metrics_say_how_they_average():
    from ray_app.metrics import metric_label

    assert metric_label("roc_auc", 3) == "roc_auc (one-vs-rest, macro)" and metric_label("f1", 5) == "f1 (macro)"
    assert metric_label("roc_auc", 2) == "roc_auc" and metric_label("accuracy", 3) == "accuracy"


def test_metric_definitions():
    y = np.array([0, 1, 1, 0])
    perfect = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
    assert classification_metrics(y, perfect) == {"accuracy": 1.0, "f1": 1.0, "roc_auc": 1.0}
    assert math.isnan(classification_metrics(np.zeros(4, int), perfect)["roc_auc"])
    three = np.eye(3)[[0, 1, 2, 2]]
    assert classification_metrics(np.array([0, 1, 2, 2]), three)["f1"] == 1.0
    assert regression_metrics(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == {"rmse": math.sqrt(2.5), "mae": 1.5}
    assert baseline_metrics("classification", 1, y)["accuracy"] == 0.5
    assert baseline_metrics("regression", 3.0, np.array([3.0, 3.0]))["rmse"] == 0.0
    counts = {"no": 2.0, "yes": 5.0}  # the majority class from the train profile's counts, as its index
    assert TargetEncoding("classification", classes=["no", "yes"]).constant_guess(counts, 0.0) == 1.0
    assert TargetEncoding("regression", mean=2.5).constant_guess({}, 2.5) == 2.5
    assert metric_value("accuracy", y, perfect) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        metric_value("auc", y, perfect)


def test_model_uris():
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    for bad in ("m@champion", "models:/m", "runs:/abc/model"):
        with pytest.raises(UserError, match="expected models:/<name>@<alias>"):
            parse_model_uri(bad)


def _bundle() -> ModelBundle:
    """A numeric-only bundle: its preprocessor (a Concatenator) needs no fitting, so no Ray Data."""
    import torch
    from ray.data.preprocessors import Chain, Concatenator

    torch.manual_seed(0)
    spec = MLPSpec(in_features=2, out_features=2, width=8, depth=1, dropout=0.0)
    prep = Chain(Concatenator(columns=["a", "b"], output_column_name=FEATURES_COLUMN, dtype=np.float32))
    return ModelBundle(mlp=spec, state_dict=TabularMLP(spec).state_dict(), preprocessor_state=prep.serialize(),
                       schema=FeatureSchema(label="y", task="classification", numeric=["a", "b"], categorical={}),
                       target=TargetEncoding("classification", classes=["no", "yes"]),
                       metrics={"holdout_roc_auc": 0.9}, dataset_version={"id": "v1"}, reference_profile=b"ref")


def test_a_bundle_round_trips_through_its_folder(tmp_path):
    bundle = _bundle()
    rows = pd.DataFrame({"a": [0.1, -2.0, 3.0], "b": [1.0, 0.5, -1.0]}, index=[7, 8, 9])
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.predict(rows) == bundle.predict(rows)
    assert set(loaded.predict(rows)["predictions"]) <= {"no", "yes"}
    assert (loaded.schema, loaded.target, loaded.metrics, loaded.dataset_version, loaded.reference_profile) == (
        bundle.schema, bundle.target, bundle.metrics, bundle.dataset_version, b"ref")
    assert loaded.size_bytes() == bundle.size_bytes()


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a model bundle"):
        ModelBundle.load(tmp_path)
    folder = _bundle().save(tmp_path / "b")
    (folder / "bundle.json").write_text((folder / "bundle.json").read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(UserError, match="bundle format 99 is not supported"):
        ModelBundle.load(folder)
