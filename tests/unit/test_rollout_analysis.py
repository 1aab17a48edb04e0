"""The rollout's step analysis: counter differences, histogram quantiles and the pass/fail rules."""

import pytest

from ray_app.config import ConfigError, ExperimentConfig, RolloutThresholds
from ray_app.rollout import Counts, judge

INF = float("inf")


def test_a_step_counts_only_its_own_traffic():
    before = Counts(requests=100, errors=1, buckets={10.0: 90, 50.0: 99, INF: 100})
    after = Counts(requests=300, errors=41, buckets={10.0: 100, 50.0: 290, INF: 300})
    step = after.minus(before)
    assert (step.requests, step.errors, step.error_rate) == (200, 40, 0.2)
    assert 10 < step.quantile(0.5) < 50 and step.quantile(0.99) == 50.0
    assert Counts(requests=5).minus(Counts(requests=100)).requests == 5  # a counter that restarted
    assert Counts().quantile(0.99) is None and Counts().online is None


def healthy(requests=200, errors=0, fast=True, correct=90, wrong=10) -> Counts:
    buckets = {10.0: requests, INF: requests} if fast else {10.0: 0, 500.0: requests, INF: requests}
    return Counts(requests=requests, errors=errors, correct=correct, wrong=wrong, buckets=buckets)


def test_a_challenger_like_the_champion_passes():
    assert judge(healthy(), healthy(), RolloutThresholds()) == []


@pytest.mark.parametrize(("challenger", "words"), [
    (healthy(errors=20), "error rate 0.100 > 0.02"),
    (healthy(fast=False), "p99"),
    (healthy(correct=60, wrong=40), "online accuracy 0.600"),
])
def test_each_rule_names_what_failed(challenger, words):
    reasons = judge(healthy(), challenger, RolloutThresholds())
    assert len(reasons) >= 1 and any(words in r for r in reasons), reasons


def test_comparisons_need_enough_champion_traffic_and_labels():
    t = RolloutThresholds(min_requests=50, min_labels=30)
    slow_and_wrong = healthy(fast=False, correct=1, wrong=9)
    assert judge(healthy(requests=10, correct=1, wrong=1), slow_and_wrong, t) == []
    # a p99 over a few dozen requests is the slowest one: judged only from min_latency_requests on both sides
    assert judge(healthy(), healthy(requests=40, fast=False), t) == []
    assert any("p99" in r for r in judge(healthy(), healthy(requests=100, fast=False), t))
    regression = Counts(requests=100, abs_error_sum=300, abs_error_count=100)
    worse = Counts(requests=100, abs_error_sum=400, abs_error_count=100)
    assert any("MAE" in r for r in judge(regression, worse, t))


def test_rollout_steps_must_increase_within_100():
    with pytest.raises(ConfigError, match="steps"):
        ExperimentConfig().with_overrides(rollout={"steps": [50, 25]})
    with pytest.raises(ConfigError, match="steps"):
        ExperimentConfig().with_overrides(rollout={"steps": [5, 150]})


class RecordedPrometheus:
    """Answers each PromQL query with fixed series (the HTTP side is exercised in tests/integration)."""

    def __init__(self, answers: dict[str, list]):
        self.answers, self.queries = answers, []

    def query(self, promql: str):
        self.queries.append(promql)
        return next((series for metric, series in self.answers.items() if metric in promql), [])


def test_snapshot_collects_every_counter_per_variant():
    from ray_app.rollout import snapshot

    prom = RecordedPrometheus({
        "ray_ab_requests_total": [({"variant": "champion"}, 90.0), ({"variant": "challenger"}, 10.0)],
        "ray_ab_errors_total": [({"variant": "challenger"}, 2.0)],
        "ray_ab_feedback_total": [({"variant": "champion", "outcome": "correct"}, 8.0),
                                  ({"variant": "champion", "outcome": "wrong"}, 2.0),
                                  ({"variant": "champion", "outcome": "other"}, 5.0)],
        "ray_ab_latency_ms_bucket": [({"variant": "challenger", "le": "10"}, 9.0),
                                     ({"variant": "challenger", "le": "+Inf"}, 10.0)],
    })
    counts = snapshot(prom, "exp")
    assert all('experiment="exp"' in q for q in prom.queries) and len(prom.queries) == 6
    assert (counts["champion"].requests, counts["champion"].errors, counts["champion"].online) == (90, 0, 0.8)
    assert counts["challenger"].error_rate == 0.2 and counts["challenger"].buckets == {10.0: 9.0, INF: 10.0}
