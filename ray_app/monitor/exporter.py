"""Drift gauges, exported through Ray's metrics agent; Prometheus sees them as `ray_drift_*`.

They describe the last closed window of each model variant, so they are held and re-set every second
(`HeldGauges`) for as long as the DriftMonitor runs: set once, Ray's agent would drop them ~20 s later.
"""

from __future__ import annotations

from ray_app.monitor.drift import DriftReport
from ray_app.telemetry import HeldGauges

# The names Prometheus sees (Ray prefixes `ray_`); rules and dashboards may use these and nothing else here.
EXPORTED = ("ray_drift_p_value", "ray_drift_effect_size", "ray_drift_detected", "ray_drift_window_rows",
            "ray_drift_window_end_timestamp_seconds", "ray_drift_window_seconds", "ray_drift_features_drifted")


class DriftExporter:
    """Per model, variant and feature: p-value, effect size (PSI), drifted flag; per window: rows, end, length."""

    def __init__(self, held: HeldGauges | None = None):
        from ray.util.metrics import Gauge

        self.held = held or HeldGauges()
        feature, window = ("model", "variant", "feature"), ("model", "variant")
        self.p_value = Gauge("drift_p_value", "p-value of the last closed window's drift test", tag_keys=feature)
        self.effect = Gauge("drift_effect_size", "PSI of the last closed window against the reference",
                            tag_keys=feature)
        self.detected = Gauge("drift_detected", "1 when the feature drifted in the last closed window "
                              "(Bonferroni p-value and PSI floor), else 0", tag_keys=feature)
        self.rows = Gauge("drift_window_rows", "rows in the last closed window", tag_keys=window)
        self.window_end = Gauge("drift_window_end_timestamp_seconds", "end of the last closed window, unix time",
                                tag_keys=window)
        self.window_length = Gauge("drift_window_seconds", "length of the monitor's windows", tag_keys=window)
        self.drifted = Gauge("drift_features_drifted", "features drifted in the last closed window", tag_keys=window)

    def export(self, model: str, variant: str, report: DriftReport, window_end: float, window_s: float) -> None:
        tags = {"model": model, "variant": variant}
        self.held.set(self.rows, report.rows, tags)
        self.held.set(self.window_end, window_end, tags)
        self.held.set(self.window_length, window_s, tags)
        self.held.set(self.drifted, len(report.drifted), tags)
        for f in report.features:
            feature = {**tags, "feature": f.feature}
            self.held.set(self.p_value, f.p_value, feature)
            self.held.set(self.effect, f.effect_size, feature)
            self.held.set(self.detected, int(f.drifted), feature)
