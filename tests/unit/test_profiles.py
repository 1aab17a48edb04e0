"""The whylogs adapter: the vectorised value sorting keeps whylogs' counts, and block profiles merge to the whole."""

import numpy as np
import pandas as pd
import pytest

from ray_app import profiles


def _frame(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=n), "i": rng.integers(0, 9, n),
                          "s": rng.choice(["x", "y", "z"], n).astype(object)})
    frame.loc[::7, "a"] = np.nan
    frame.loc[::11, "a"] = np.inf
    frame.loc[::5, "s"] = None
    frame.loc[::13, "s"] = np.nan
    frame["mixed"] = pd.Series([1, "a", 2.5, None] * (n // 4), dtype=object)  # whylogs' own way
    return frame


def _counts(data: bytes) -> dict:
    summary = profiles.profile_summary(data)
    return {col: {k: v for k, v in stats.items() if k.startswith(("counts/", "types/"))}
            or {} for col, stats in summary.items()}


def test_vectorised_sorting_keeps_whylogs_counts():
    frame = _frame()
    fast = profiles.profile_frame(frame)
    from whylogs.core.metrics.metrics import FrequentItemsMetric
    from whylogs.core.preprocessing import PreprocessedColumn

    speedups = PreprocessedColumn._pandas_split, FrequentItemsMetric.columnar_update
    with profiles.whylogs_own_code():
        assert PreprocessedColumn._pandas_split is not speedups[0]
        assert FrequentItemsMetric.columnar_update is not speedups[1]
        own = profiles.profile_frame(frame)
    assert (PreprocessedColumn._pandas_split, FrequentItemsMetric.columnar_update) == speedups
    assert _counts(fast) == _counts(own)
    assert _counts(fast)["a"]["counts/inf"] > 0 and _counts(fast)["s"]["counts/null"] > 0


def _sketches(data: bytes, column: str, items: bool = True) -> dict:
    summary = profiles.profile_summary(data)[column]
    keep = ("counts/", "types/", "cardinality/") + (("frequent_items/",) if items else ())
    return {k: v for k, v in summary.items() if k.startswith(keep)}


def test_text_columns_counted_once_per_value_give_whylogs_own_sketches():
    rng = np.random.default_rng(2)
    n = 5000
    prefix = "p" * 128  # cut to 128 characters, these two are one frequent item
    frame = pd.DataFrame({
        "colour": rng.choice(["red", "green", "blue", "grey"], n, p=[0.5, 0.3, 0.15, 0.05]).astype(object),
        "long": rng.choice([prefix + "a", prefix + "b", "short"], n).astype(object),
        "id": pd.Series([f"user-{i}" for i in rng.permutation(n)], dtype=object),  # more than the sketch holds
        "mixed": pd.Series(["x", 1, "y", None] * (n // 4), dtype=object),  # numbers and text in one column
    })
    frame.loc[::9, "colour"] = None
    fast = profiles.profile_frame(frame)
    with profiles.whylogs_own_code():
        own = profiles.profile_frame(frame)
    for column in ("colour", "long", "mixed"):
        assert _sketches(fast, column) == _sketches(own, column), column
    assert _sketches(fast, "id", items=False) == _sketches(own, "id", items=False)
    assert profiles.ProfileReader(fast).counts("long") == {prefix: pytest.approx((frame["long"] != "short").sum()),
                                                          "short": pytest.approx((frame["long"] == "short").sum())}
    summary = profiles.profile_summary(fast)["colour"]
    assert summary["counts/null"] == len(frame[::9]) and 3.9 < summary["cardinality/est"] < 4.1


def test_block_profiles_merge_to_the_whole():
    frame = _frame()
    merged = profiles.merge_serialized(profiles.profile_frame(frame.iloc[i::5]) for i in range(5))
    assert _counts(merged) == _counts(profiles.profile_frame(frame))
    reader = profiles.ProfileReader(merged)
    finite = frame["a"][np.isfinite(frame["a"])]
    mean, std = reader.moments("i")
    assert mean == frame["i"].mean() and abs(std - frame["i"].std()) < 1e-6
    assert reader.quantiles("a", [0.0])[0] == finite.min()
    assert profiles.merge_serialized([]) is None


def test_arrow_text_is_counted_in_bulk_with_whylogs_own_sketches():
    """Parquet's text (pandas 3's `str`, Arrow-backed) is sorted by Arrow's kernels, never one Python object a
    value, and gives the sketches whylogs' own code gives for the same column and for its plain-object copy."""
    from whylogs.core.preprocessing import PreprocessedColumn

    rng = np.random.default_rng(3)
    n = 5000
    frame = pd.DataFrame({
        "colour": pd.Series(rng.choice(["red", "green", "blue", "grey"], n, p=[0.5, 0.3, 0.15, 0.05]), dtype="str"),
        "long": pd.Series(rng.choice(["p" * 128 + "a", "p" * 128 + "b", "short"], n), dtype="str"),
        "id": pd.Series([f"user-{i}" for i in rng.permutation(n)], dtype="str"),
        "na": pd.Series(rng.choice(["x", "y"], n), dtype="string[pyarrow]"),  # nulls are pd.NA, not NaN
        "none": pd.Series([None] * n, dtype="str"),
    })
    frame.loc[::9, "colour"] = None
    frame.loc[::7, "na"] = pd.NA
    assert all(profiles.is_arrow_text(frame[c]) for c in frame)
    sorted_column = PreprocessedColumn.apply(frame["colour"])
    assert sorted_column.__dict__["text_counts"].to_dict() == frame["colour"].value_counts(sort=False).to_dict()
    fast = profiles.profile_frame(frame)
    with profiles.whylogs_own_code():
        own = profiles.profile_frame(frame)
    as_objects = profiles.profile_frame(frame.astype(object))
    for column in frame:
        items = column != "id"  # more distinct values than the frequent-items sketch holds: its picks may differ
        assert _sketches(fast, column, items) == _sketches(own, column, items) == _sketches(as_objects, column, items)
    assert profiles.profile_summary(fast)["na"]["counts/null"] == len(frame[::7])
