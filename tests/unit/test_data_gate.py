"""The data gate's rules on real whylogs profiles: each problem is named with column, rule, observed, expected."""

import numpy as np
import pytest

from ray_app.config import DataGateConfig
from ray_app.data.sources import FeatureSpec, synthetic_frame
from ray_app.data.validate import Reference, validate_frame
from ray_app.profiles import profile_frame

SPEC = FeatureSpec(label="label", numeric=[f"x{i}" for i in range(6)], categorical=["segment", "channel"],
                   task="classification")
GATE = DataGateConfig(min_rows=50, max_null_fraction=0.01)


@pytest.fixture(scope="module")
def reference() -> Reference:
    train = synthetic_frame(3000, seed=0)
    return Reference.from_profile(SPEC.numeric, {"segment": ["a", "b", "c", "d"], "channel": ["app", "store", "web"]},
                                  profile_frame(train[SPEC.features]))


def rules(report) -> set[tuple[str, str]]:
    return {(v.column, v.rule) for v in report.violations}


def test_fresh_data_from_the_same_distribution_passes(reference):
    report = validate_frame(synthetic_frame(800, seed=5), SPEC, GATE, reference)
    assert report.passed, report.render()
    assert "PASSED" in report.render()


def test_each_problem_is_named(reference):
    frame = synthetic_frame(800, seed=5).drop(columns=["x5"])
    frame.loc[:99, "x1"] = np.nan  # a null burst
    frame.loc[3, "x2"] = 55.0  # far out of range
    frame.loc[7, "segment"] = "zz"  # a category the champion never saw
    report = validate_frame(frame, SPEC, GATE, reference, source="bad.parquet")
    assert rules(report) == {("x5", "missing column"), ("x1", "null fraction"), ("x1", "null jump"),
                             ("x2", "range"), ("segment", "unseen category")}
    text = report.render()
    assert "FAILED" in text and "bad.parquet" in text and "zz" in text and "0.125 (100 rows)" in text
    x2 = next(v for v in report.violations if v.column == "x2")
    assert "55" in x2.observed and x2.expected.startswith("within [")


def test_a_jump_in_a_null_fraction_against_the_champion_is_named():
    train = synthetic_frame(3000, seed=0)
    train.loc[train.index % 20 == 0, "x1"] = np.nan  # the champion saw 5% nulls in x1
    train.loc[train.index % 20 == 0, "segment"] = None
    reference = Reference.from_profile(SPEC.numeric, {"segment": ["a", "b", "c", "d"], "channel": ["app", "store",
                                                                                                  "web"]},
                                       profile_frame(train[SPEC.features]))
    tolerant = DataGateConfig(min_rows=50, max_null_fraction=0.5)
    similar = synthetic_frame(800, seed=5)
    similar.loc[similar.index % 12 == 0, ["x1", "segment"]] = None  # 8%: within 5% + 0.05
    assert validate_frame(similar, SPEC, tolerant, reference).passed
    jumped = synthetic_frame(800, seed=5)
    jumped.loc[:239, "x1"] = np.nan  # 30%
    report = validate_frame(jumped, SPEC, tolerant, reference)
    assert rules(report) == {("x1", "null jump")}
    violation = report.violations[0]
    assert violation.observed.startswith("0.300") and "champion's data 0.050" in violation.expected


def test_row_count_label_balance_and_types(reference):
    small = synthetic_frame(30, seed=1)
    assert ("*", "row count") in rules(validate_frame(small, SPEC, GATE, reference))
    skewed = synthetic_frame(800, seed=1)
    skewed.loc[:, "label"] = 0
    skewed.loc[:3, "label"] = 1
    assert ("label", "label balance") in rules(validate_frame(skewed, SPEC, GATE, reference))
    typed = synthetic_frame(200, seed=1)
    typed["x0"] = typed["x0"].astype(str)
    assert ("x0", "type") in rules(validate_frame(typed, SPEC, GATE, reference))


def test_without_a_champion_the_spec_rules_still_apply():
    frame = synthetic_frame(300, seed=2)
    assert validate_frame(frame, SPEC, GATE).passed
    frame.loc[:50, "x0"] = np.nan
    explicit = DataGateConfig(ranges={"x3": (-1.0, 1.0)})
    report = validate_frame(frame, SPEC, explicit)
    assert rules(report) == {("x0", "null fraction"), ("x3", "range")}


def test_arrow_text_and_plain_objects_get_the_same_verdict(reference):
    """Parquet gives Arrow-backed text, which the gate profiles as it is; a plain-object copy of the same rows (a
    CSV or an older pandas) must be judged the same, figure for figure."""
    from ray_app.data.validate import GateColumns, gate_view
    from ray_app.profiles import column_stats, is_arrow_text

    frame = synthetic_frame(800, seed=5)
    frame.loc[::9, "segment"] = None
    frame.loc[7, "channel"] = "fax"
    frame.loc[::40, "label"] = 2  # a rare class
    objects = frame.astype({"segment": object, "channel": object})
    assert is_arrow_text(frame["segment"]) and not is_arrow_text(objects["segment"])
    columns = GateColumns.of(SPEC, reference, {str(c): str(t) for c, t in frame.dtypes.items()})
    (arrow_view, arrow_facts), (object_view, object_facts) = gate_view(frame, columns), gate_view(objects, columns)
    assert is_arrow_text(arrow_view["segment"]) and is_arrow_text(arrow_view["label"])
    assert arrow_facts == object_facts and arrow_facts["labels"] == {"0": 398, "1": 382, "2": 20}
    assert column_stats(profile_frame(arrow_view)) == column_stats(profile_frame(object_view))
    arrow, plain = (validate_frame(f, SPEC, GATE, reference) for f in (frame, objects))
    assert arrow.violations == plain.violations
    assert rules(arrow) == {("segment", "null fraction"), ("segment", "null jump"), ("channel", "unseen category")}
