"""Drift gauges, exported through Ray's metrics agent; Prometheus sees them as `ray_drift_*`."""

from __future__ import annotations

from ray_app.monitor.drift import DriftReport

# The names Prometheus sees (Ray prefixes `ray_`); rules and dashboards may use these and nothing else here.
EXPORTED = ("ray_drift_p_value", "ray_drift_effect_size", "ray_drift_detected", "ray_drift_window_rows",
            "ray_drift_window_end_timestamp_seconds", "ray_drift_features_drifted")


class DriftExporter:
    """Per model, variant and feature: p-value, effect size (PSI), drifted flag; per window: rows, end time."""

    def __init__(self):
        from ray.util.metrics import Gauge

        feature, window = ("model", "variant", "feature"), ("model", "variant")
        self.p_value = Gauge("drift_p_value", "p-value of the last closed window's drift test", tag_keys=feature)
        self.effect = Gauge("drift_effect_size", "PSI of the last closed window against the reference",
                            tag_keys=feature)
        self.detected = Gauge("drift_detected", "1 when the feature drifted in the last closed window "
                              "(Bonferroni p-value and PSI floor), else 0", tag_keys=feature)
        self.rows = Gauge("drift_window_rows", "rows in the last closed window", tag_keys=window)
        self.window_end = Gauge("drift_window_end_timestamp_seconds", "end of the last closed window, unix time",
                                tag_keys=window)
        self.drifted = Gauge("drift_features_drifted", "features drifted in the last closed window", tag_keys=window)

    def export(self, model: str, variant: str, report: DriftReport, window_end: float) -> None:
        tags = {"model": model, "variant": variant}
        self.rows.set(report.rows, tags=tags)
        self.window_end.set(window_end, tags=tags)
        self.drifted.set(len(report.drifted), tags=tags)
        for f in report.features:
            feature = {**tags, "feature": f.feature}
            self.p_value.set(f.p_value, tags=feature)
            self.effect.set(f.effect_size, tags=feature)
            self.detected.set(int(f.drifted), tags=feature)
