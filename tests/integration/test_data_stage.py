"""The data stage on a real Ray cluster: Ray Data reads, splits, and a preprocessor fitted on train only."""

import numpy as np
import pytest

from ray_app.config import DataConfig
from ray_app.data.preprocess import prepare
from ray_app.data.sources import synthetic_frame
from ray_app.data.splits import FOLD_COLUMN, SPLITS, assign_splits, clear

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
    data = prepare(DataConfig(source=str(source), label="label", seed=0), paths)

    splits = assign_splits(frame, 0, 0.15, 0.15)
    counts = {name: data.raw(name).count() for name in SPLITS}
    assert counts == {name: int((splits == name).sum()) for name in SPLITS} == data.cache.counts()
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
    data = prepare(DataConfig(source="breast_cancer"), paths)
    row = data.model_inputs("train").take(1)[0]
    assert row["features"].dtype == np.float32 and row["features"].shape == (30,)
    assert row["target"] in (0, 1) and data.num_features == 30
    assert data.target.classes == [0, 1]


def _rows(frame) -> set[tuple]:
    return {tuple(row) for row in frame.to_numpy(dtype=object).tolist()}


def test_a_multi_file_dataset_is_split_once_and_read_lazily(paths, tmp_path):
    """Four Parquet files give the same split membership as the rows' hash says; the cache is written once, and
    the gate's holdout (the cache's holdout partition) holds exactly the training holdout's rows."""
    frame = synthetic_frame(1200, seed=9)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 4)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    cfg = DataConfig(source=str(folder), label="label", seed=3)
    data = prepare(cfg, paths)
    assert len(data.version.files) == 4 and data.version.num_rows == 1200
    splits = assign_splits(frame, 3, 0.15, 0.15)
    holdout = data.raw("holdout").to_pandas()
    assert _rows(holdout) == _rows(frame[splits == "holdout"])
    assert FOLD_COLUMN not in holdout.columns
    marker = f"{data.cache.root}/_COMPLETE.json"
    written = __import__("os").stat(marker).st_mtime_ns
    again = prepare(cfg, paths)
    assert again.cache.root == data.cache.root and __import__("os").stat(marker).st_mtime_ns == written
    sample = data.cache.sample("holdout", 50)
    assert 20 <= len(sample) <= 90 and sample.equals(data.cache.sample("holdout", 50))  # seeded, fixed
    assert _rows(sample) <= _rows(holdout)
    lazy = data.cache.subsample("holdout", 50).to_pandas()  # what registration scores: the same rows, streamed
    assert _rows(lazy) == _rows(sample) and FOLD_COLUMN not in lazy.columns
    assert len(data.cache.subsample("holdout", 10_000).to_pandas()) == len(holdout)


def test_cv_folds_are_disjoint_and_cover_train_and_val(paths):
    cfg = DataConfig(source="synthetic", seed=0)
    whole = prepare(cfg, paths)
    outside_holdout = _rows(whole.raw("train").to_pandas()) | _rows(whole.raw("val").to_pandas())
    vals = [_rows(prepare(cfg, paths, fold=(3, i)).raw("val").to_pandas()) for i in range(3)]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])
    assert set().union(*vals) == outside_holdout
    fold0 = prepare(cfg, paths, fold=(3, 0))
    assert _rows(fold0.raw("train").to_pandas()) == outside_holdout - vals[0]


def test_the_split_cache_can_be_cleared(paths, tmp_path):
    storage = tmp_path / "storage"
    data = prepare(DataConfig(source="synthetic", seed=1), paths.model_copy(update={"storage_path": str(storage)}))
    assert data.cache.counts() is not None
    assert clear(str(storage)) == 1 and data.cache.counts() is None


def test_the_data_gate_on_a_dataset_profiled_block_by_block_says_what_it_says_on_the_whole_frame(tmp_path):
    """Profiles of many small blocks, merged in the driver, reach the verdicts of one profile of all the rows."""
    import ray.data

    from ray_app.config import DataGateConfig
    from ray_app.data.sources import FeatureSpec
    from ray_app.data.validate import Reference, validate_dataset, validate_frame
    from ray_app.profiles import profile_frame

    spec = FeatureSpec(label="label", numeric=[f"x{i}" for i in range(6)], categorical=["segment", "channel"],
                       task="classification")
    reference = Reference.from_profile(spec.numeric, {"segment": ["a", "b", "c", "d"], "channel": ["app", "store"]},
                                       profile_frame(synthetic_frame(3000, seed=0)[spec.features]))
    frame = synthetic_frame(900, seed=5)
    frame.loc[:99, "x1"] = np.nan
    frame.loc[3, "x2"] = 55.0
    frame.loc[7, "segment"] = "zz"
    frame.loc[frame.index % 100 == 0, "label"] = 2  # a rare class: 1%
    gate = DataGateConfig(min_rows=50, max_null_fraction=0.01)
    whole = validate_frame(frame, spec, gate, reference)
    types = {c: str(t) for c, t in frame.dtypes.items()}
    blocks = validate_dataset(ray.data.from_pandas([frame.iloc[i::9] for i in range(9)]), types, spec, gate, reference)
    assert blocks.rows == whole.rows == 900
    assert {(v.column, v.rule, v.observed) for v in blocks.violations} == \
        {(v.column, v.rule, v.observed) for v in whole.violations}
    assert {v.rule for v in blocks.violations} >= {"null fraction", "range", "unseen category", "label balance"}


@pytest.mark.parametrize(("source", "version", "counts"), [
    ("synthetic", "78c03974a7fa92a3", {"train": 1371, "val": 317, "holdout": 312}),
    ("breast_cancer", "aaff1d2b444a614d", {"train": 394, "val": 86, "holdout": 89}),
    ("diabetes", "eac885bedba9f629", {"train": 306, "val": 65, "holdout": 71}),
])
def test_the_built_in_sets_keep_their_version_and_split(paths, source, version, counts):
    """Figures of the code before the split cache (593a3ef, which split in every stage): the cache changes where
    the split lives, not what it is."""
    data = prepare(DataConfig(source=source), paths)
    assert data.version.id == version
    assert data.cache.counts() == counts
