"""The whylogs adapter: the only module that imports whylogs (1.6.4, unmaintained; see docs/architecture.md)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd


def _whylogs():
    """Import whylogs with the fixes it needs on NumPy 2 and with its analytics off."""
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "1")
    if not hasattr(np, "unicode_"):
        np.unicode_ = np.str_  # whylogs 1.6.4 still refers to the NumPy 1 alias
    import whylogs

    return whylogs


def profile_frame(frame: pd.DataFrame) -> bytes:
    """Profile a DataFrame and return the serialized profile view."""
    why = _whylogs()
    # pandas 3 string columns are an extension dtype whylogs does not know; plain objects it does.
    frame = frame.astype({c: object for c in frame.columns if pd.api.types.is_string_dtype(frame[c])})
    return why.log(frame).view().serialize()


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
