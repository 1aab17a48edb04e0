"""Held gauges: set once, re-set on a clock until forgotten or stopped (Ray's agent drops a gauge not re-set)."""

import time

from ray_app.monitor.drift import DriftReport, FeatureDrift
from ray_app.telemetry import HeldGauges


class RecordingGauge:
    """Stands in for a Ray gauge: records every `set`."""

    def __init__(self):
        self.sets: list[tuple[float, dict]] = []

    def set(self, value, tags=None):
        self.sets.append((value, dict(tags or {})))


def test_a_held_value_is_set_again_until_forgotten():
    gauge, held = RecordingGauge(), HeldGauges(interval_s=0.02)
    held.set(gauge, 1.0, {"variant": "a"})
    held.set(gauge, 2.0, {"variant": "b"})
    held.set(gauge, 3.0, {"variant": "a"})  # replaces a's value
    time.sleep(0.2)
    assert sorted(held.held(), key=lambda v: v[0]) == [(2.0, {"variant": "b"}), (3.0, {"variant": "a"})]
    later = gauge.sets[3:]
    assert len(later) >= 6 and {v for v, _ in later} == {2.0, 3.0}
    held.forget(gauge, {"variant": "b"})
    time.sleep(0.1)
    count = len(gauge.sets)
    time.sleep(0.1)
    assert {v for v, _ in gauge.sets[count:]} == {3.0}
    held.stop()
    time.sleep(0.06)
    count = len(gauge.sets)
    time.sleep(0.1)
    assert len(gauge.sets) == count


def test_a_drift_report_survives_its_json_form():
    report = DriftReport(rows=500, alpha=0.01, min_effect=0.1, judged=True,
                         features=[FeatureDrift("x0", "numeric", "ks", 0.3, 1e-9, 0.4, 500, True),
                                   FeatureDrift("c", "categorical", "chi2", 1.0, 0.5, 0.01, 500, False)])
    stored = {"window_start": 0.0, "window_end": 300.0, **report.to_dict()}
    assert DriftReport.from_dict(stored) == report
