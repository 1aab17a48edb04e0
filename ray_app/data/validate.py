"""The data gate: rules from the spec and from the champion's reference profile, checked on a whylogs profile
(built block by block in Ray Data for a dataset, merged) and a few exact counts beside it."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ray_app.config import DataGateConfig
from ray_app.data.preprocess import as_numbers, categories_as_text
from ray_app.data.sources import FeatureSpec, is_numeric_type
from ray_app.profiles import PROFILE_BATCH_ROWS, column_stats, is_arrow_text, merge_serialized, profile_frame


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
    seconds: float | None = None  # the profiling pass over a Ray Dataset, when there was one

    @property
    def passed(self) -> bool:
        return not self.violations

    def render(self) -> str:
        took = f", profiled in {self.seconds:.1f} s" if self.seconds is not None else ""
        head = f"data gate: {self.source} ({self.rows} rows{took}): {'PASSED' if self.passed else 'FAILED'}"
        if self.passed:
            return head
        width = max(len(v.column) for v in self.violations)
        lines = [head, f"  {'column'.ljust(width)}  {'rule':<16} {'observed':<40} expected"]
        lines += [f"  {v.column.ljust(width)}  {v.rule:<16} {v.observed:<40} {v.expected}" for v in self.violations]
        return "\n".join(lines)


@dataclass(frozen=True)
class GateColumns:
    """Which columns the data gate reads, as what, and their types in the source (Arrow or pandas names)."""

    label: str
    task: str
    numeric: list[str]
    categorical: list[str]
    types: dict[str, str]

    @classmethod
    def of(cls, spec: FeatureSpec, reference: Reference | None, types: dict[str, str]) -> GateColumns:
        numeric = reference.numeric if reference else spec.numeric
        categorical = list(reference.categorical) if reference else spec.categorical
        return cls(spec.label, spec.task, [c for c in numeric if c in types], [c for c in categorical if c in types],
                   types)


def gate_view(batch: pd.DataFrame, columns: GateColumns) -> tuple[pd.DataFrame, dict]:
    """One batch as the data gate profiles it (numbers as float, categories and classes as text, a column of the
    wrong type as it is), and the exact counts that a sketch would blur: rows, non-integer numbers in categorical
    columns, rows per class."""
    frame = pd.DataFrame(index=range(len(batch)))
    facts: dict = {"rows": len(batch), "non_integer": {}, "labels": {}}
    for column in columns.numeric:
        numeric_type = is_numeric_type(columns.types[column]) or columns.types[column] == "null"
        frame[column] = as_numbers(batch[column]) if numeric_type else batch[column].reset_index(drop=True)
    for column in columns.categorical:
        values = batch[column].reset_index(drop=True)
        if pd.api.types.is_float_dtype(values):
            finite = values.to_numpy(dtype=np.float64)
            facts["non_integer"][column] = int(np.count_nonzero(np.mod(finite[np.isfinite(finite)], 1)))
        # Arrow text (what Parquet gives) stays Arrow: the whylogs adapter counts it without a Python object per value
        frame[column] = values if is_arrow_text(values) else categories_as_text(values, missing=None)
    if columns.label in batch:
        labels = batch[columns.label].reset_index(drop=True)
        if columns.task == "classification":
            text = labels.astype("str").where(labels.notna().to_numpy())
            facts["labels"] = {str(k): int(v) for k, v in text.value_counts().items()}
            frame[columns.label] = text
        else:
            frame[columns.label] = as_numbers(labels)
    return frame, facts


def add_facts(total: dict, part: dict) -> dict:
    """Sum two nested dicts of counts."""
    out = dict(total)
    for key, value in part.items():
        out[key] = add_facts(out.get(key, {}), value) if isinstance(value, dict) else out.get(key, 0) + value
    return out


def _schema_rules(columns: GateColumns, spec: FeatureSpec, reference: Reference | None, stats: dict,
                  facts: dict) -> list[Violation]:
    numeric = reference.numeric if reference else spec.numeric
    categorical = list(reference.categorical) if reference else spec.categorical
    out = [Violation(col, "missing column", "absent", "present") for col in [spec.label, *numeric, *categorical]
           if col not in columns.types]
    out += [Violation(col, "type", columns.types[col], "numeric") for col in columns.numeric
            if stats.get(col, {}).get("strings", 0) > 0]
    out += [Violation(col, "type", columns.types[col], "string or integer-coded category")
            for col in columns.categorical if facts["non_integer"].get(col, 0) > 0]
    return out


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
    """The data gate on rows held in memory (the same rules as on a profiled dataset)."""
    columns = GateColumns.of(spec, reference, {str(c): str(t) for c, t in frame.dtypes.items()})
    view, facts = gate_view(frame, columns)
    return validate_profile(profile_frame(view, cardinality=False), facts, columns, spec, gate, reference, source)


def _gate_block(batch: pd.DataFrame, columns: GateColumns) -> pd.DataFrame:
    view, facts = gate_view(batch, columns)
    return pd.DataFrame({"profile": [profile_frame(view, cardinality=False)], "facts": [json.dumps(facts)]})


def validate_dataset(ds, types: dict[str, str], spec: FeatureSpec, gate: DataGateConfig,
                     reference: Reference | None = None, source: str = "<dataset>") -> DataReport:
    """The data gate on a Ray Dataset: each block is profiled where it lies, and the driver merges the views and
    the counts as they stream back (it never holds the rows)."""
    columns = GateColumns.of(spec, reference, types)
    wanted = [c for c in dict.fromkeys([columns.label, *columns.numeric, *columns.categorical]) if c in types]
    parts = ds.select_columns(wanted).map_batches(_gate_block, fn_args=(columns,), batch_format="pandas",
                                                  batch_size=PROFILE_BATCH_ROWS)
    facts: dict = {"rows": 0, "non_integer": {}, "labels": {}}

    def profiles():
        nonlocal facts
        for row in parts.iter_rows():
            facts = add_facts(facts, json.loads(row["facts"]))
            yield row["profile"]

    start = time.perf_counter()
    profile = merge_serialized(profiles()) or profile_frame(pd.DataFrame())
    seconds = time.perf_counter() - start
    return dataclasses.replace(validate_profile(profile, facts, columns, spec, gate, reference, source),
                               seconds=seconds)


def validate_profile(profile: bytes, facts: dict, columns: GateColumns, spec: FeatureSpec, gate: DataGateConfig,
                     reference: Reference | None = None, source: str = "<frame>") -> DataReport:
    """Check schema, row count, null fractions, numeric ranges, categories and label balance on a merged profile
    and its exact counts."""
    stats = column_stats(profile)
    violations = _schema_rules(columns, spec, reference, stats, facts)
    rows = int(facts.get("rows", 0))
    if rows < gate.min_rows:
        violations.append(Violation("*", "row count", str(rows), f">= {gate.min_rows}"))
    if rows == 0:
        return DataReport(source, rows, violations)
    present = [c for c in [columns.label, *columns.numeric, *columns.categorical] if c in stats]
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
        allowed = _range(column, gate, reference) if column in columns.numeric else None
        if allowed and "min" in col and (col["min"] < allowed[0] or col["max"] > allowed[1]):
            violations.append(Violation(column, "range", f"[{col['min']:.4g}, {col['max']:.4g}]",
                                        f"within [{allowed[0]:.4g}, {allowed[1]:.4g}]"))
        known = reference.categorical.get(column) if reference else None
        if known is not None and "categories" in col:
            unseen = sorted(set(col["categories"]) - set(known))
            if unseen:
                violations.append(Violation(column, "unseen category", ", ".join(unseen[:5]),
                                            f"one of {', '.join(known[:8])}"))
    if spec.task == "classification" and columns.label in columns.types:
        counts = facts.get("labels", {})
        labelled = sum(counts.values()) or 1
        if len(counts) < 2:
            violations.append(Violation(spec.label, "label balance", f"{len(counts)} class", ">= 2 classes"))
        for value, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            if count / labelled < gate.min_class_fraction:
                violations.append(Violation(spec.label, "label balance", f"class {value}: {count / labelled:.3f}",
                                            f">= {gate.min_class_fraction:.3f}"))
    return DataReport(source, rows, violations)
