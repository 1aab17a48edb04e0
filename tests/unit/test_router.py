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


def test_feedback_log_scores_keeps_rows_and_forgets_old_ids(tmp_path):
    import pandas as pd

    from ray_app.serve.feedback import FeedbackLog
    from ray_app.serve.validation import RequestError

    log = FeedbackLog(str(tmp_path), flush_rows=3, capacity=2)
    log.remember("r1", "champion", [{"x0": 1.0}, {"x0": 2.0}], [0, 1], classes=True)
    log.remember("r2", "challenger", [{"x0": 3.0}], [1], classes=True)
    log.remember("r3", "challenger", [{"x0": 4.0}], [12.5], classes=False)
    with pytest.raises(RequestError, match="unknown or expired request_id 'r1'"):
        log.label("r1", [0, 1])  # pushed out by capacity 2
    with pytest.raises(RequestError, match="expected 1 label"):
        log.label("r2", [1, 0])
    assert log.label("r2", [1]) == ("challenger", [True])
    assert log.label("r3", [10.0]) == ("challenger", [2.5])
    assert not list(tmp_path.glob("*.parquet"))  # 2 rows < flush_rows
    log.flush()
    stored = pd.concat(pd.read_parquet(p) for p in sorted(tmp_path.glob("*.parquet")))
    assert list(stored["request_id"]) == ["r2", "r3"] and list(stored["x0"]) == [3.0, 4.0]
    with pytest.raises(RequestError, match="unknown"):
        log.label("r2", [1])  # each answer is labelled once


class _FlakyHandle:
    """A variant handle whose first `failures` calls raise `exc`, as a replica lost with its node does."""

    def __init__(self, failures: int, exc: Exception):
        self.failures, self.exc, self.calls = failures, exc, 0

    @property
    def handle_payload(self):
        return self

    def remote(self, payload):
        self.calls += 1

        async def answer():
            if self.calls <= self.failures:
                raise self.exc
            return 200, {"predictions": [1]}

        return answer()


@pytest.mark.parametrize(("failures", "exc", "calls", "status"), [
    (2, "died", 3, 200),        # two replicas lost under the call: the third try answers
    (3, "died", 3, 500),        # still no live replica after the retries: a 500 naming the error
    (1, "unavailable", 2, 200),
    (1, "bug", 1, 500),         # the variant's own error is not retried: it would fail again
])
def test_a_variant_call_whose_replica_died_is_asked_again(monkeypatch, failures, exc, calls, status):
    import asyncio
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from ray_app.serve import router

    monkeypatch.setattr(router, "RETRY_PAUSE_S", 0.0)
    error = {"died": ActorDiedError(), "unavailable": ActorUnavailableError("node lost", b"\0" * 16),
             "bug": ValueError("bad weights")}[exc]
    handle = _FlakyHandle(failures, error)
    cls = router.ABRouter.func_or_class
    fake = SimpleNamespace(variants={"champion": handle}, variant_retries=2, _failed=cls._failed)
    answered, body = asyncio.run(cls._ask(fake, "champion", "handle_payload", {"instances": []}))
    assert (answered, handle.calls) == (status, calls)
    if status == 500:
        assert body["error"] == f"variant champion failed: {type(error).__name__}"
