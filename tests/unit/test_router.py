"""ABRouter assignment: stable per key, split by weight, monotone when a weight grows; settings validated."""

import pytest
from pydantic import ValidationError
from scipy import stats

from ray_app.serve.router import RouterSettings, assign, bucket


def test_bucket_is_stable_and_depends_on_experiment():
    assert bucket("exp", "user-1") == bucket("exp", "user-1")
    assert bucket("exp", "user-1") != bucket("other", "user-1")
    assert 0.0 <= bucket("exp", "user-2") < 1.0


def test_split_follows_weights():
    settings = RouterSettings(experiment="e", weights={"champion": 90, "challenger": 10})
    counts = {"champion": 0, "challenger": 0}
    for i in range(20_000):
        counts[assign(settings, f"user-{i}")] += 1
    p = stats.chisquare([counts["champion"], counts["challenger"]], [18_000, 2_000]).pvalue
    assert p > 0.001, counts


def test_raising_a_weight_only_moves_keys_towards_that_variant():
    before = RouterSettings(experiment="e", weights={"champion": 90, "challenger": 10})
    after = RouterSettings(experiment="e", weights={"champion": 50, "challenger": 50})
    moved = [(assign(before, f"u{i}"), assign(after, f"u{i}")) for i in range(5000)]
    assert all(b == a or a == "challenger" for b, a in moved)
    assert sum(b == "challenger" for b, _ in moved) < sum(a == "challenger" for _, a in moved)


def test_zero_weight_gets_nothing_and_settings_are_validated():
    only = RouterSettings(weights={"champion": 1, "challenger": 0})
    assert {assign(only, f"k{i}") for i in range(500)} == {"champion"}
    with pytest.raises(ValidationError, match="non-negative: challenger"):
        RouterSettings(weights={"champion": 1, "challenger": -1})
    with pytest.raises(ValidationError, match="at least one weight"):
        RouterSettings(weights={"champion": 0})
    with pytest.raises(ValueError, match="unknown variant"):
        RouterSettings(weights={"champion": 1, "ghost": 1}).check_names({"champion", "challenger"})
    with pytest.raises(ValueError, match="unknown variant"):
        RouterSettings(weights={"champion": 1}, shadow="ghost").check_names({"champion"})
