"""Data behaviour without Ray: built-in sets, fingerprints, deterministic splits, feature inference."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_app.config import DataConfig, SyntheticConfig
from ray_app.data.preprocess import TargetEncoding
from ray_app.data.sources import (
    DataSourceError,
    builtin_frame,
    fingerprint,
    infer_spec,
    materialize_builtin,
    resolve_files,
    source_files,
    synthetic_frame,
)
from ray_app.data.splits import assign_splits


def test_synthetic_is_seeded_and_drift_moves_the_means():
    a, b = synthetic_frame(500, seed=1), synthetic_frame(500, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not synthetic_frame(500, seed=2).equals(a)
    drifted = synthetic_frame(5000, drift=1.0, seed=1)
    assert drifted["x0"].mean() == pytest.approx(1.0, abs=0.1)
    assert set(a["segment"]) <= {"a", "b", "c", "d"} and set(a["label"]) == {0, 1}


def test_builtin_sklearn_sets_have_a_label_column():
    cancer = builtin_frame(DataConfig(source="breast_cancer"))
    assert "label" in cancer and "mean_radius" in cancer and len(cancer) == 569
    assert "label" in builtin_frame(DataConfig(source="diabetes"))


def test_fingerprint_is_stable_and_sensitive_to_one_byte(tmp_path):
    frame = synthetic_frame(200, seed=3)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    frame.to_csv(first, index=False)
    frame.to_csv(second, index=False)
    v1, v2 = fingerprint([str(first)]), fingerprint([str(second)])
    assert v1.id == v2.id and v1.num_rows == 200
    raw = bytearray(second.read_bytes())
    position = raw.index(b".") + 1  # a digit after the first decimal point
    raw[position] = ord("7") if raw[position] != ord("7") else ord("3")
    second.write_bytes(bytes(raw))
    assert fingerprint([str(second)]).id != v1.id


def test_fingerprint_of_parquet_builtin_is_stable(tmp_path):
    cfg = DataConfig(synthetic=SyntheticConfig(rows=300))
    path = materialize_builtin(cfg, tmp_path)
    assert materialize_builtin(cfg, tmp_path) == path
    version = fingerprint([str(path)])
    assert version.num_rows == 300 and version.columns["segment"] in ("string", "large_string")
    assert fingerprint([str(path)]) == version


def test_resolve_files_errors_are_readable(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_files(str(tmp_path / "missing.parquet"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match="Parquet or CSV"):
        resolve_files(str(tmp_path / "notes.txt"))
    synthetic_frame(10).to_csv(tmp_path / "part-1.csv", index=False)
    synthetic_frame(10).to_csv(tmp_path / "part-0.csv", index=False)
    assert [p.rsplit("/", 1)[-1] for p in resolve_files(str(tmp_path))] == ["part-0.csv", "part-1.csv"]


def test_split_is_deterministic_order_free_and_seeded():
    frame = synthetic_frame(4000, seed=0)
    splits = assign_splits(frame, seed=7, val_fraction=0.15, holdout_fraction=0.15)
    shuffled = frame.sample(frac=1.0, random_state=1)
    again = assign_splits(shuffled, seed=7, val_fraction=0.15, holdout_fraction=0.15)
    assert (pd.Series(again, index=shuffled.index).sort_index().to_numpy() == splits).all()
    share = pd.Series(splits).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.03) and share["holdout"] == pytest.approx(0.15, abs=0.03)
    other = assign_splits(frame, seed=8, val_fraction=0.15, holdout_fraction=0.15)
    assert (other != splits).mean() > 0.2


def test_infer_spec_from_schema_and_errors():
    columns = {"age": "int64", "city": "string", "income": "double", "churned": "int64"}
    spec = infer_spec(DataConfig(source="/data/x.parquet", label="churned"), columns)
    assert spec.numeric == ["age", "income"] and spec.categorical == ["city"] and spec.task == "classification"
    with pytest.raises(DataSourceError, match="data.label is required"):
        infer_spec(DataConfig(source="/data/x.parquet"), columns)
    with pytest.raises(DataSourceError, match="'nope' not in the data"):
        infer_spec(DataConfig(source="/data/x.parquet", label="nope"), columns)
    with pytest.raises(DataSourceError, match="not in the data: zip"):
        infer_spec(DataConfig(source="/data/x.parquet", label="churned", numeric=["zip"]), columns)
    assert infer_spec(DataConfig(source="/d.csv", label="income"), columns).task == "regression"


def test_target_encoding_round_trip_and_unseen_label():
    enc = TargetEncoding.fit("classification", pd.Series(["no", "yes", "no"]))
    assert enc.classes == ["no", "yes"] and list(enc.encode(pd.Series(["yes", "no"]))) == [1, 0]
    with pytest.raises(ValueError, match="maybe"):
        enc.encode(pd.Series(["maybe"]))
    reg = TargetEncoding.fit("regression", pd.Series([1.0, 3.0]))
    assert np.allclose(reg.encode(pd.Series([2.0])), [0.0]) and reg.num_outputs == 1


def test_folds_partition_rows_deterministically():
    from ray_app.data.splits import assign_folds

    frame = synthetic_frame(3000, seed=0)
    folds = assign_folds(frame, seed=0, folds=5)
    assert set(folds) == set(range(5)) and (assign_folds(frame, seed=0, folds=5) == folds).all()
    assert pd.Series(folds).value_counts(normalize=True).between(0.17, 0.23).all()
    splits = assign_splits(frame, seed=0, val_fraction=0.15, holdout_fraction=0.15)
    # folds are drawn independently of the split, so every fold has rows of every split
    assert all(((folds == f) & (splits == "holdout")).any() for f in range(5))


def test_feedback_rows_join_the_data_as_a_new_version(tmp_path):
    base = pd.DataFrame({"x": [0.1, 0.2, 0.3], "c": ["a", "b", "a"], "label": [0, 1, 0]})
    base.to_parquet(tmp_path / "train.parquet", index=False)
    files = [str(tmp_path / "train.parquet")]
    assert source_files(DataConfig(source=files[0], feedback=str(tmp_path / "none")), tmp_path) == files
    folder = tmp_path / "feedback"
    folder.mkdir()
    pd.DataFrame({"x": [0.9], "c": ["b"], "label": ["1"], "prediction": [0], "variant": ["champion"],
                  "request_id": ["r1"], "labelled_at": [1.0]}).to_parquet(folder / "feedback-1.parquet")
    merged = source_files(DataConfig(source=files[0], feedback=str(folder)), tmp_path / "data")
    assert merged[0] == files[0] and len(merged) == 2  # the data is not rewritten: the feedback joins as a file
    frame = pd.concat([pd.read_parquet(f) for f in merged], ignore_index=True)
    assert list(frame.columns) == ["x", "c", "label"] and len(frame) == 4 and frame["label"].tolist() == [0, 1, 0, 1]
    assert pq.read_schema(merged[1]) == pq.read_schema(files[0]).remove_metadata()
    assert fingerprint(merged).id != fingerprint(files).id
    (tmp_path / "bad").mkdir()
    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "bad" / "feedback-2.parquet")
    with pytest.raises(DataSourceError, match="lack column"):
        source_files(DataConfig(source=files[0], feedback=str(tmp_path / "bad")), tmp_path / "data")


def test_categories_as_text_in_bulk_match_category_text_per_value():
    import pyarrow as pa

    from ray_app.data.preprocess import MISSING, categories_as_text, category_text

    columns = [pd.Series(["a", None, "b", np.nan], dtype=object), pd.Series(["a", None, "b"], dtype="string"),
               pd.Series(["a", None, "b"], dtype=pd.ArrowDtype(pa.large_string())), pd.Series([1.0, None, 3.0]),
               pd.Series([1, "x", None], dtype=object), pd.Series([True, False, None], dtype=object),
               pd.Series([], dtype=object)]
    for column in columns:
        for missing in (MISSING, None):
            expected = [missing if pd.isna(v) else category_text(v) for v in column.tolist()]
            assert categories_as_text(column, missing).tolist() == expected, column.dtype


def test_arrow_backed_numbers_convert_as_numpy_backed_ones():
    """Ray Data's pandas batches hold `double[pyarrow]`, `int64[pyarrow]`, `bool[pyarrow]`: converted in one copy,
    to what the same values give through pandas' own conversion (nulls NaN, booleans 0/1, index from 0)."""
    import pyarrow as pa

    from ray_app.data.preprocess import as_numbers

    cases = [([1.5, None, float("inf"), -2.0], pa.float64()), ([1.5, None], pa.float32()),
             ([1, None, 2**60 + 1], pa.int64()), ([True, None, False], pa.bool_())]
    for values, arrow_type in cases:
        column = pd.Series(pd.array(values, dtype=pd.ArrowDtype(arrow_type)), index=range(7, 7 + len(values)))
        plain = pd.Series([np.nan if v is None else float(v) for v in values])
        converted = as_numbers(column)
        assert converted.dtype == np.float64 and list(converted.index) == list(range(len(values)))
        np.testing.assert_array_equal(converted.to_numpy(), plain.to_numpy())
