"""Integrated Gradients on a bundle: encoded columns summed back to raw features, completeness, and a feature the
network cannot see getting nothing. No Ray cluster (the fitted chain of tests/unit/test_fastpath.py)."""

import numpy as np
import torch

from ray_app.explain import feature_columns, global_attributions, integrated_gradients
from tests.unit.test_fastpath import bundle_for, fitted_chain, training_frame


def _bundle():
    frame = training_frame()
    return bundle_for(fitted_chain(frame)), frame


def test_each_raw_feature_owns_its_encoded_columns():
    bundle, _ = _bundle()
    owned = dict(feature_columns(bundle))
    assert list(owned) == ["x0", "x1", "flat", "segment", "tier"]
    assert owned["x0"] == [0] and owned["x1"] == [1, 3]  # x1 is nullable: its missing indicator is column 3
    assert owned["segment"] == [4, 5, 6] and owned["tier"] == [7, 8, 9]  # tier also keeps `__missing__`


def test_attributions_add_up_to_the_output_minus_the_baseline():
    bundle, frame = _bundle()
    rows = frame.head(20)
    attributions = integrated_gradients(bundle, rows, steps=128)
    assert attributions.shape == (20, 5)
    x = torch.from_numpy(bundle.encode(rows))
    with torch.no_grad():
        proba = torch.softmax(bundle.model(x), dim=1).numpy()
        base = torch.softmax(bundle.model(torch.zeros_like(x)), dim=1).numpy()
    chosen = proba.argmax(axis=1)
    expected = proba[np.arange(20), chosen] - base[np.arange(20), chosen]
    np.testing.assert_allclose(attributions.sum(axis=1), expected, atol=2e-3)


def test_a_feature_the_network_ignores_gets_no_attribution():
    bundle, frame = _bundle()
    first = next(key for key in bundle.state_dict if key.endswith("weight"))
    for column in dict(feature_columns(bundle))["segment"]:
        bundle.state_dict[first][:, column] = 0.0
    bundle._model = None  # rebuilt from the edited weights
    table = global_attributions(bundle, frame)
    shares = dict(zip(table["feature"], table["share"], strict=True))
    assert shares["segment"] == 0.0 and shares["x0"] > 0.05
    assert abs(table["share"].sum() - 1.0) < 1e-9 and list(table["mean_abs_attribution"]) == sorted(
        table["mean_abs_attribution"], reverse=True)


def test_regression_attributions_add_up_in_the_label_units():
    from ray_app.data.preprocess import TargetEncoding
    from ray_app.package import FeatureSchema, ModelBundle
    from ray_app.train.model import MLPSpec, TabularMLP

    classifier, frame = _bundle()
    torch.manual_seed(1)
    spec = MLPSpec(in_features=10, out_features=1, width=8, depth=2, dropout=0.0)  # one output: shape (rows,)
    bundle = ModelBundle(mlp=spec, state_dict=TabularMLP(spec).state_dict(),
                         preprocessor_state=classifier.preprocessor_state,
                         schema=FeatureSchema(**{**classifier.schema.model_dump(), "task": "regression"}),
                         target=TargetEncoding("regression", mean=5.0, std=2.0))
    rows = frame.head(10)
    attributions = integrated_gradients(bundle, rows, steps=128)
    x = torch.from_numpy(bundle.encode(rows))
    with torch.no_grad():
        expected = 2.0 * (bundle.model(x).reshape(-1) - bundle.model(torch.zeros_like(x)).reshape(-1)).numpy()
    np.testing.assert_allclose(attributions.sum(axis=1), expected, atol=2e-3)
