"""Drift tests on whylogs sketches: a shifted feature is found, stationary windows stay quiet."""

import numpy as np
import pandas as pd
import pytest

from ray_app.config import MonitorConfig
from ray_app.monitor.drift import compare_frames, compare_profiles, psi, write_report
from ray_app.profiles import profile_frame

SETTINGS = MonitorConfig(min_rows=100)


def frame(rng, n, shift=0.0, shares=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    return pd.DataFrame({"x0": rng.normal(size=n) + shift, "x1": rng.normal(size=n), "x2": rng.exponential(size=n),
                         "channel": rng.choice(["web", "app", "store"], n, p=list(shares))})


@pytest.fixture(scope="module")
def reference() -> bytes:
    return profile_frame(frame(np.random.default_rng(0), 20_000))


def window(reference: bytes, current: pd.DataFrame, settings=SETTINGS):
    return compare_profiles(reference, profile_frame(current), ["x0", "x1", "x2"], ["channel"], settings)


def test_a_half_sd_shift_on_one_feature_is_found_and_only_there(reference):
    report = window(reference, frame(np.random.default_rng(1), 1000, shift=0.5))
    assert report.drifted == ["x0"]
    x0 = next(f for f in report.features if f.feature == "x0")
    assert x0.test == "ks" and 0.15 < x0.statistic < 0.3 and x0.p_value < 1e-10 and x0.effect_size > 0.1


def test_a_category_mix_change_is_found(reference):
    report = window(reference, frame(np.random.default_rng(2), 1000, shares=(0.2, 0.3, 0.5)))
    assert report.drifted == ["channel"]
    assert next(f for f in report.features if f.feature == "channel").test == "chi2"


def test_a_jump_of_one_columns_null_share_is_drift_of_that_feature(tmp_path):
    rng = np.random.default_rng(4)
    base = frame(rng, 20_000)
    base.loc[base.index % 20 == 0, "x1"] = np.nan  # 5% missing in the reference
    base.loc[base.index % 25 == 0, "channel"] = None
    ref = profile_frame(base)
    same = frame(rng, 1000)
    same.loc[same.index % 20 == 0, "x1"] = np.nan
    same.loc[same.index % 25 == 0, "channel"] = None
    assert window(ref, same).drifted == []
    jumped = same.copy()
    jumped.loc[:299, "x1"] = np.nan  # 30%
    report = window(ref, jumped)
    assert report.drifted == ["x1__missing"]
    nulls = next(f for f in report.features if f.feature == "x1__missing")
    assert nulls.kind == "nulls" and nulls.statistic > 10 and nulls.effect_size > 0.1
    offline = compare_frames(base, jumped.assign(channel=jumped["channel"].where(jumped.index % 2 == 0)),
                             SETTINGS)
    assert {"x1__missing", "channel__missing"} <= set(offline.drifted)
    written = write_report(offline, base, jumped, tmp_path)
    assert tmp_path / "drift_x1__missing.png" in written


def test_stationary_windows_stay_quiet(reference):
    rng = np.random.default_rng(3)
    flagged = sum(bool(window(reference, frame(rng, 500)).drifted) for _ in range(200))
    assert flagged == 0


def test_small_windows_are_not_judged_and_bonferroni_divides_alpha(reference):
    small = window(reference, frame(np.random.default_rng(4), 50, shift=3.0))
    assert not small.judged and small.drifted == [] and small.rows == 50
    assert small.threshold == pytest.approx(0.01 / 4)


def test_predictions_are_compared_with_the_reference_labels():
    rng = np.random.default_rng(5)
    ref = frame(rng, 5000).assign(label=rng.choice(["0", "1"], 5000, p=[0.7, 0.3]))
    cur = frame(rng, 1000).assign(prediction=rng.choice(["0", "1"], 1000, p=[0.3, 0.7]))
    report = compare_profiles(profile_frame(ref), profile_frame(cur), ["x0"], ["channel"], SETTINGS, label="label")
    assert report.drifted == ["prediction"]


def test_psi_is_zero_for_equal_shares_and_grows_with_the_gap():
    same = np.array([0.25, 0.25, 0.5])
    assert psi(same, same) == pytest.approx(0.0)
    assert 0 < psi(same, np.array([0.2, 0.3, 0.5])) < psi(same, np.array([0.1, 0.4, 0.5]))


def test_offline_report_writes_a_table_and_a_plot_per_drifted_feature(tmp_path):
    rng = np.random.default_rng(6)
    ref, cur = frame(rng, 3000), frame(rng, 1000, shift=1.0)
    report = compare_frames(ref, cur, SETTINGS)
    written = write_report(report, ref, cur, tmp_path)
    assert report.drifted == ["x0"]
    assert {p.name for p in written} == {"report.json", "report.md", "drift_x0.png"}
    assert "| x0 | numeric | ks |" in (tmp_path / "report.md").read_text()
