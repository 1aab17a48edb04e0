"""The whylogs adapter: the only module that imports whylogs (1.6.4, unmaintained; see docs/architecture.md)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

# whylogs' own attributes that the adapter's speed-ups replaced, by (class, name); None where it was inherited.
_ORIGINALS: dict[tuple[type, str], Any] = {}


def _whylogs():
    """Import whylogs with the fixes it needs on NumPy 2, its analytics off and the adapter's speed-ups in."""
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "1")
    if not hasattr(np, "unicode_"):
        np.unicode_ = np.str_  # whylogs 1.6.4 still refers to the NumPy 1 alias
    if "whylogs" not in sys.modules:
        _import_without_sklearn("whylogs")
    import whylogs
    from whylogs.core.metrics.metrics import CardinalityMetric, FrequentItemsMetric
    from whylogs.core.metrics.unicode_range import UnicodeRangeMetric
    from whylogs.core.preprocessing import PreprocessedColumn

    speedups = {
        (PreprocessedColumn, "_pandas_split"): _vectorised_split,
        (FrequentItemsMetric, "columnar_update"): lambda own: _counted_text(own, _weighted_items),
        (CardinalityMetric, "columnar_update"): lambda own: _counted_text(own, _distinct_items),
        # The resolver asks each metric its namespace through `zero()`, which for this one (off by default) builds
        # a whole set of sub-metrics: ~15 ms per text column per profiled batch, for a constant.
        (UnicodeRangeMetric, "get_namespace"): lambda own: classmethod(lambda cls, config=None: "unicode_range"),
    }
    for (owner, name), speedup in speedups.items():
        if (owner, name) not in _ORIGINALS:
            _ORIGINALS[owner, name] = owner.__dict__.get(name)
            setattr(owner, name, speedup(getattr(owner, name)))
    return whylogs


def _import_without_sklearn(module: str) -> None:
    """Import `module` while scikit-learn looks absent, when nothing has imported it yet. whylogs' `core.stubs`
    imports `sklearn.cluster` and friends (with scipy.stats: ~1 s, nine tenths of whylogs' import) for its
    experimental embedding metrics alone, which take stand-ins when it is missing; every Ray worker and replica that
    profiles would pay that second at its first batch. scikit-learn stays importable afterwards."""
    blocked = "sklearn" not in sys.modules
    if blocked:
        sys.modules["sklearn"] = None  # an import of it raises ImportError while this entry stands
    try:
        importlib.import_module(module)
    finally:
        if blocked and sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]


@contextmanager
def whylogs_own_code():
    """whylogs' own code paths while the block runs, without the adapter's speed-ups: the baseline that tests and
    benchmarks hold them against."""
    _whylogs()
    mine = {key: key[0].__dict__[key[1]] for key in _ORIGINALS}
    try:
        for (owner, name), original in _ORIGINALS.items():
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        yield
    finally:
        for (owner, name), speedup in mine.items():
            setattr(owner, name, speedup)


def _vectorised_split(original):
    """whylogs 1.6.4 sorts a column's values into numbers and strings with a Python call per value (~130k rows/s).
    NumPy number columns and all-text object columns are sorted here in bulk, with the same counts; anything
    else (mixed types, tensors, booleans) takes whylogs' own way."""

    def split(self, series: pd.Series, parse_numeric_string: bool = False) -> None:
        dtype = series.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "iuf":
            values = series.to_numpy()
            if dtype.kind == "f":
                missing = np.isnan(values)
                self.null_count = self.nan_count = int(missing.sum())
                floats = (values[~missing] if self.null_count else values).astype(float, copy=False)
                self.inf_count = int(np.isinf(floats).sum())
                self.numpy.floats = floats
            else:
                self.numpy.ints = values.astype(int)
            return
        if is_arrow_text(series):
            _split_arrow_text(self, series)
            return
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            present = series.notna().to_numpy()
            texts = series[present]
            if pd.api.types.infer_dtype(texts, skipna=False) in ("string", "empty"):
                nulls = series[~present]
                self.null_count = len(nulls)
                self.nan_count = sum(isinstance(v, float) for v in nulls)
                if len(texts):
                    self.pandas.strings = texts
                return
        original(self, series, parse_numeric_string)

    return split


def is_arrow_text(series: pd.Series) -> bool:
    """Whether a column is Arrow-backed text: pandas 3's `str` and `string[pyarrow]`, or `large_string[pyarrow]` as
    Ray Data's pandas batches hold it. The adapter sorts such a column in bulk."""
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype):
        return dtype.storage == "pyarrow"
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    return False


def _split_arrow_text(column, series: pd.Series) -> None:
    """An Arrow-backed text column (what Parquet and pandas 3 give) sorted without a Python object per value: nulls
    and the counts of each distinct value come from Arrow's kernels, so the frequent-items and cardinality sketches
    below are fed from them as for an object column. The counts are whylogs' own for such a column (its nulls are
    NaN, or pd.NA, which whylogs does not count as NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(series.array)
    column.null_count = values.null_count
    column.nan_count = values.null_count if series.dtype.na_value is np.nan else 0
    if column.null_count == len(values):
        return
    counted = pc.value_counts(values)  # distinct values in order of first appearance, as value_counts(sort=False)
    distinct, counts = counted.field("values"), counted.field("counts")
    present = distinct.is_valid()
    column.pandas.strings = series.dropna()
    column.__dict__["text_counts"] = pd.Series(counts.filter(present).to_numpy(),
                                               index=distinct.filter(present).to_pylist())


def _counted_text(update, add_counts):
    """whylogs 1.6.4's frequent-items and cardinality metrics hand a text column to their sketches value by value
    (frequent items first cut every value to 128 characters in Python): most of the cost of profiling a categorical
    column. A categorical column holds few distinct values, so each goes to the sketch once, with its count as the
    weight (frequent items) or once (a repeat cannot change a HyperLogLog); the rest of the column (numbers,
    booleans) takes whylogs' own way. Below the frequent-items sketch's capacity the sketches come out the same."""
    from whylogs.core.metrics.metrics import OperationResult

    def columnar_update(self, view):
        strings = view.pandas.strings
        if strings is None or not len(strings):
            return update(self, view)
        rest = copy.copy(view)
        rest.pandas = dataclasses.replace(view.pandas, strings=None)
        result = update(self, rest)
        add_counts(self, _text_counts(view))
        return OperationResult(successes=result.successes + len(strings), failures=result.failures)

    return columnar_update


def _text_counts(view) -> pd.Series:
    """How often each text value occurs in a preprocessed column: counted once, for both sketches."""
    counts = view.__dict__.get("text_counts")
    if counts is None:
        counts = view.__dict__["text_counts"] = view.pandas.strings.value_counts(sort=False)
    return counts


def _weighted_items(metric, counts: pd.Series) -> None:
    sketch, size = metric.frequent_strings.value, metric.max_frequent_item_size
    for value, count in counts.items():
        sketch.update(value[:size], int(count))


def _distinct_items(metric, counts: pd.Series) -> None:
    metric.hll.value.update_str_list(counts.index.tolist())


def profile_frame(frame: pd.DataFrame, cardinality: bool = True) -> bytes:
    """Profile a DataFrame and return the serialized profile view. `cardinality=False` leaves out whylogs'
    HyperLogLog sketches, a quarter of the cost of a numeric column, for profiles that never read a cardinality
    (the data gate's)."""
    why = _whylogs()
    # Arrow-backed text (pandas 3's `str`) is sorted by the adapter; any other string extension dtype, whylogs
    # does not know: as plain objects it does.
    frame = frame.astype({c: object for c in frame.columns
                          if pd.api.types.is_string_dtype(frame[c]) and not is_arrow_text(frame[c])})
    schema = None if cardinality else _without_cardinality()
    return why.log(frame, schema=schema).view().serialize()


@functools.cache
def _without_cardinality():
    """A whylogs schema with the standard metrics of each column type but the cardinality sketch."""
    from whylogs.core.resolvers import StandardResolver
    from whylogs.core.schema import DatasetSchema

    class NoCardinality(StandardResolver):
        def resolve(self, name, why_type, column_schema):
            metrics = super().resolve(name, why_type, column_schema)
            metrics.pop("cardinality", None)
            return metrics

    return DatasetSchema(resolvers=NoCardinality())


def load_profile(data: bytes):
    """A profile view from bytes written by `profile_frame`."""
    _whylogs()
    from whylogs.core import DatasetProfileView

    return DatasetProfileView.deserialize(data)


def profile_summary(data: bytes) -> dict[str, dict[str, Any]]:
    """Per-column counts and distribution figures, for reports and tests."""
    view = load_profile(data)
    summary = view.to_pandas()
    return {str(col): {k: v for k, v in row.items() if np.isscalar(v) and pd.notna(v)}
            for col, row in summary.iterrows()}


def column_stats(data: bytes) -> dict[str, dict[str, Any]]:
    """Per column of a serialized profile: rows, nulls (None or NaN), min, max, and the categories seen.

    Categories come from whylogs' frequent-items sketch, exact for the few hundred distinct values that a
    categorical feature has.
    """
    view = load_profile(data)
    stats: dict[str, dict[str, Any]] = {}
    for name, column in view.get_columns().items():
        summary = column.to_summary_dict()
        entry: dict[str, Any] = {"n": int(summary.get("counts/n", 0)), "null": int(summary.get("counts/null", 0)),
                                 "strings": int(summary.get("types/string", 0))}
        if summary.get("distribution/n"):
            entry["min"], entry["max"] = float(summary["distribution/min"]), float(summary["distribution/max"])
        items = summary.get("frequent_items/frequent_strings") or []
        if entry["strings"]:
            entry["categories"] = sorted(str(item.value) for item in items)
        stats[str(name)] = entry
    return stats


PROFILE_BATCH_ROWS = 200_000  # rows per profiled batch: one serialized view each, merged as they stream back


def _profile_batch(batch: pd.DataFrame, transform, args: tuple) -> pd.DataFrame:
    frame = transform(batch, *args) if transform is not None else batch
    return pd.DataFrame({"profile": [profile_frame(frame)]})


def merge_serialized(profiles: Iterable[bytes]) -> bytes | None:
    """The union of serialized profiles, merged one at a time (only the running view is held)."""
    merged = None
    for data in profiles:
        view = load_profile(data)
        merged = view if merged is None else merged.merge(view)
    return None if merged is None else merged.serialize()


def profile_dataset(ds, transform: Callable[..., pd.DataFrame] | None = None, *args: Any) -> bytes:
    """Profile a Ray Dataset inside Ray Data, batch by batch (`transform(batch, *args)` first, if given), and merge
    the serialized views as they stream back: the driver never holds the rows."""
    profiled = ds.map_batches(_profile_batch, fn_args=(transform, args), batch_format="pandas",
                              batch_size=PROFILE_BATCH_ROWS)
    merged = merge_serialized(row["profile"] for row in profiled.iter_rows())
    return merged if merged is not None else profile_frame(pd.DataFrame())


def merge_profiles(first: bytes | None, second: bytes) -> bytes:
    """The union of two serialized profiles (window profiles merge batch by batch)."""
    if first is None:
        return second
    return load_profile(first).merge(load_profile(second)).serialize()


class ProfileReader:
    """The sketches of one serialized profile as plain numbers, for drift tests that must not touch whylogs."""

    def __init__(self, data: bytes):
        self.view = load_profile(data)
        self.columns = {str(name): column for name, column in self.view.get_columns().items()}

    def rows(self, column: str) -> int:
        total, nulls = self.null_counts(column)
        return total - nulls

    def null_counts(self, column: str) -> tuple[int, int]:
        """(rows, of which null: None or NaN) of a column."""
        summary = self.columns[column].to_summary_dict() if column in self.columns else {}
        return int(summary.get("counts/n", 0)), int(summary.get("counts/null", 0))

    def _kll(self, column: str):
        metric = self.columns[column].get_metric("distribution") if column in self.columns else None
        sketch = metric.kll.value if metric is not None else None
        return sketch if sketch is not None and not sketch.is_empty() else None

    def moments(self, column: str) -> tuple[float, float]:
        """(mean, standard deviation) of a numeric column; (nan, nan) without numbers."""
        summary = self.columns[column].to_summary_dict() if column in self.columns else {}
        if not summary.get("distribution/n"):
            return float("nan"), float("nan")
        return float(summary["distribution/mean"]), float(summary["distribution/stddev"])

    def quantiles(self, column: str, qs: list[float]) -> list[float] | None:
        """Quantiles of a numeric column from its KLL sketch; None when the column has no numbers."""
        sketch = self._kll(column)
        return None if sketch is None else [float(v) for v in sketch.get_quantiles(qs)]

    def cdf(self, column: str, points: list[float]) -> list[float] | None:
        """P(X <= point) for each (sorted, distinct) point, from the KLL sketch."""
        sketch = self._kll(column)
        return None if sketch is None else [float(v) for v in sketch.get_cdf(points)[:-1]]

    def counts(self, column: str) -> dict[str, float]:
        """Estimated count of each value seen (frequent-items sketch; exact for a few hundred categories)."""
        metric = self.columns[column].get_metric("frequent_items") if column in self.columns else None
        if metric is None:
            return {}
        return {str(item.value): float(item.est) for item in metric.to_summary_dict()["frequent_strings"]}
