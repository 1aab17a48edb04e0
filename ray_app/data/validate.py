"""The data gate: rules from the spec and from the champion's reference profile, checked on a whylogs profile."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ray_app.config import DataGateConfig
from ray_app.data.sources import FeatureSpec
from ray_app.profiles import column_stats, profile_frame


@dataclass(frozen=True)
class Violation:
    """One failed rule: which column, which rule, what was seen and what was expected."""

    column: str
    rule: str
    observed: str
    expected: str


@dataclass(frozen=True)
class Reference:
    """What the champion was trained on: its feature kinds and categories, and its profile's column stats."""

    numeric: list[str]
    categorical: dict[str, list[str]]
    stats: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, numeric: list[str], categorical: dict[str, list[str]], profile: bytes | None) -> Reference:
        return cls(numeric, categorical, column_stats(profile) if profile else {})


@dataclass
class DataReport:
    """The data gate's verdict on one dataset."""

    source: str
    rows: int
    violations: list[Violation]

    @property
    def passed(self) -> bool:
        return not self.violations

    def render(self) -> str:
        head = f"data gate: {self.source} ({self.rows} rows): {'PASSED' if self.passed else 'FAILED'}"
        if self.passed:
            return head
        width = max(len(v.column) for v in self.violations)
        lines = [head, f"  {'column'.ljust(width)}  {'rule':<16} {'observed':<40} expected"]
        lines += [f"  {v.column.ljust(width)}  {v.rule:<16} {v.observed:<40} {v.expected}" for v in self.violations]
        return "\n".join(lines)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _schema_rules(frame: pd.DataFrame, spec: FeatureSpec, reference: Reference | None) -> list[Violation]:
    numeric = reference.numeric if reference else spec.numeric
    categorical = list(reference.categorical) if reference else spec.categorical
    out = [Violation(col, "missing column", "absent", "present") for col in [spec.label, *numeric, *categorical]
           if col not in frame]
    out += [Violation(col, "type", str(frame[col].dtype), "numeric") for col in numeric
            if col in frame and not (_is_numeric(frame[col]) or pd.api.types.is_bool_dtype(frame[col]))
            and frame[col].notna().any()]
    out += [Violation(col, "type", str(frame[col].dtype), "string or integer-coded category") for col in categorical
            if col in frame and _is_numeric(frame[col]) and not _integer_valued(frame[col])]
    return out


def _integer_valued(series: pd.Series) -> bool:
    values = series.dropna().to_numpy(dtype=float)
    return bool(np.all(np.mod(values, 1) == 0))


def _range(column: str, gate: DataGateConfig, reference: Reference | None) -> tuple[float, float] | None:
    if column in gate.ranges:
        return gate.ranges[column]
    ref = reference.stats.get(column, {}) if reference else {}
    if "min" not in ref:
        return None
    span = ref["max"] - ref["min"]
    return ref["min"] - gate.range_slack * span, ref["max"] + gate.range_slack * span


def validate_frame(frame: pd.DataFrame, spec: FeatureSpec, gate: DataGateConfig,
                   reference: Reference | None = None, source: str = "<frame>") -> DataReport:
    """Check schema, row count, null fractions, numeric ranges, categories and label balance."""
    violations = _schema_rules(frame, spec, reference)
    rows = len(frame)
    if rows < gate.min_rows:
        violations.append(Violation("*", "row count", str(rows), f">= {gate.min_rows}"))
    if rows == 0:
        return DataReport(source, rows, violations)
    expected = {spec.label, *spec.features, *(reference.numeric if reference else []),
                *(reference.categorical if reference else [])}
    present = [c for c in frame.columns if c in expected]
    stats = column_stats(profile_frame(frame[present]))
    for column in present:
        col = stats[column]
        null_fraction = col["null"] / max(col["n"], 1)
        if null_fraction > gate.max_null_fraction:
            violations.append(Violation(column, "null fraction", f"{null_fraction:.3f} ({col['null']} rows)",
                                        f"<= {gate.max_null_fraction:.3f} (gate.data.max_null_fraction)"))
        ref = reference.stats.get(column) if reference else None
        if ref and ref.get("n") and null_fraction > ref["null"] / ref["n"] + gate.null_fraction_slack:
            was = ref["null"] / ref["n"]
            violations.append(Violation(column, "null jump", f"{null_fraction:.3f} ({col['null']} rows)",
                                        f"<= {was + gate.null_fraction_slack:.3f} (champion's data {was:.3f} + "
                                        f"{gate.null_fraction_slack:g})"))
        allowed = _range(column, gate, reference) if column != spec.label else None
        if allowed and "min" in col and (col["min"] < allowed[0] or col["max"] > allowed[1]):
            violations.append(Violation(column, "range", f"[{col['min']:.4g}, {col['max']:.4g}]",
                                        f"within [{allowed[0]:.4g}, {allowed[1]:.4g}]"))
        known = reference.categorical.get(column) if reference else None
        if known is not None and "categories" in col:
            unseen = sorted(set(col["categories"]) - set(known))
            if unseen:
                violations.append(Violation(column, "unseen category", ", ".join(unseen[:5]),
                                            f"one of {', '.join(known[:8])}"))
    if spec.task == "classification" and spec.label in frame:
        share = frame[spec.label].value_counts(normalize=True)
        if len(share) < 2:
            violations.append(Violation(spec.label, "label balance", f"{len(share)} class", ">= 2 classes"))
        for value, fraction in share.items():
            if fraction < gate.min_class_fraction:
                violations.append(Violation(spec.label, "label balance", f"class {value}: {fraction:.3f}",
                                            f">= {gate.min_class_fraction:.3f}"))
    return DataReport(source, rows, violations)
