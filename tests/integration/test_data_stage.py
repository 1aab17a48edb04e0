"""The data stage on a real Ray cluster: Ray Data reads, splits, and a preprocessor fitted on train only."""

import numpy as np
import pytest

from ray_app.config import DataConfig
from ray_app.data.preprocess import prepare
from ray_app.data.sources import synthetic_frame
from ray_app.data.splits import assign_splits

pytestmark = pytest.mark.timeout(300)


def _frame_with_holdout_only_category(seed: int):
    """A table where one row in holdout carries the category 'zz' that no train row has."""
    frame = synthetic_frame(1500, seed=4)
    for i in np.flatnonzero(assign_splits(frame, seed, 0.15, 0.15) == "holdout"):
        candidate = frame.copy()
        candidate.loc[i, "segment"] = "zz"
        if assign_splits(candidate, seed, 0.15, 0.15)[i] == "holdout":
            return candidate
    raise AssertionError("no holdout row keeps its split when relabelled")


def test_preprocessor_is_fitted_on_train_only(paths, tmp_path):
    frame = _frame_with_holdout_only_category(seed=0)
    source = tmp_path / "table.csv"
    frame.to_csv(source, index=False)
    data = prepare(DataConfig(source=str(source), label="label", seed=0), paths.data_dir)

    splits = assign_splits(frame, 0, 0.15, 0.15)
    counts = {name: ds.count() for name, ds in data.raw.items()}
    assert counts == {name: int((splits == name).sum()) for name in ("train", "val", "holdout")}
    from ray.data.preprocessors import OneHotEncoder, StandardScaler

    scaler = next(step for step in data.preprocessor.preprocessors if isinstance(step, StandardScaler))
    encoder = next(step for step in data.preprocessor.preprocessors if isinstance(step, OneHotEncoder))
    train_mean = frame.loc[splits == "train", "x0"].mean()
    assert scaler.stats_["mean(x0)"] == pytest.approx(train_mean, abs=1e-9)
    assert abs(scaler.stats_["mean(x0)"] - frame["x0"].mean()) > 1e-6
    seen = str(encoder.stats_)
    assert "zz" not in seen and "'a'" in seen
    assert data.version.num_rows == 1500 and data.spec.categorical == ["segment", "channel"]


def test_model_inputs_are_vectors_and_targets(paths):
    data = prepare(DataConfig(source="breast_cancer"), paths.data_dir)
    row = data.model_inputs["train"].take(1)[0]
    assert row["features"].dtype == np.float32 and row["features"].shape == (30,)
    assert row["target"] in (0, 1) and data.num_features == 30
    assert data.target.classes == [0, 1]
