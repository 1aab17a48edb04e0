"""The whylogs adapter: the vectorised value sorting keeps whylogs' counts, and block profiles merge to the whole."""

import numpy as np
import pandas as pd

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


def test_vectorised_sorting_keeps_whylogs_counts(monkeypatch):
    frame = _frame()
    fast = profiles.profile_frame(frame)
    from whylogs.core.preprocessing import PreprocessedColumn

    vectorised = PreprocessedColumn._pandas_split
    assert vectorised.vectorised
    original = vectorised.__closure__[0].cell_contents
    monkeypatch.setattr(PreprocessedColumn, "_pandas_split", original)
    monkeypatch.setattr(profiles, "_vectorised_split", lambda split: split)  # the adapter must not patch it again
    own = profiles.profile_frame(frame)
    assert PreprocessedColumn._pandas_split is original
    assert _counts(fast) == _counts(own)
    assert _counts(fast)["a"]["counts/inf"] > 0 and _counts(fast)["s"]["counts/null"] > 0


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
