"""Request validation: every malformed request gets a 4xx status and a message that names the problem."""

import json

import numpy as np
import pytest

from ray_app.package import FeatureSchema
from ray_app.serve.validation import (
    RequestError,
    ValidRows,
    check_labels,
    check_outputs,
    parse_body,
    validate_instances,
)

SCHEMA = FeatureSchema(label="label", task="classification", numeric=["x0", "x1"],
                       categorical={"segment": ["a", "b"]})
GOOD = {"x0": 0.5, "x1": -1, "segment": "a"}

# (body, expected status, text the message must contain)
MALFORMED = [
    (b"", 400, "empty body"),
    (b"{not json", 400, "not valid JSON"),
    (b'{"instances": [{"x0": NaN, "x1": 1, "segment": "a"}]}', 422, "NaN is not allowed"),
    (b'{"instances": [{"x0": Infinity, "x1": 1, "segment": "a"}]}', 422, "Infinity is not allowed"),
    (json.dumps([GOOD]).encode(), 422, '"instances"'),
    (json.dumps({"rows": [GOOD]}).encode(), 422, '"instances"'),
    (json.dumps({"instances": []}).encode(), 422, "non-empty list"),
    (json.dumps({"instances": GOOD}).encode(), 422, "non-empty list"),
    (json.dumps({"instances": [GOOD, 3]}).encode(), 422, "instance 1: expected an object"),
    (json.dumps({"instances": [{"x0": 1, "segment": "a"}]}).encode(), 422, "missing field(s): x1"),
    (json.dumps({"instances": [{**GOOD, "x9": 1}]}).encode(), 422, "unknown field(s): x9"),
    (json.dumps({"instances": [{**GOOD, "x0": "1.5"}]}).encode(), 422, "'x0': expected a number, got str"),
    (json.dumps({"instances": [{**GOOD, "x0": True}]}).encode(), 422, "'x0': expected a number, got bool"),
    (json.dumps({"instances": [{**GOOD, "x1": None}]}).encode(), 422, "'x1': null is not allowed"),
    (json.dumps({"instances": [{**GOOD, "segment": None}]}).encode(), 422, "'segment': null is not allowed"),
    (json.dumps({"instances": [{**GOOD, "segment": [3]}]}).encode(), 422, "'segment': expected a string category"),
    (json.dumps({"instances": [{**GOOD, "segment": {"a": 1}}]}).encode(), 422, "'segment': expected a string cat"),
    (b'{"instances": [{"x0": -Infinity, "x1": 1, "segment": "a"}]}', 422, "-Infinity is not allowed"),
    (b'{"instances": [{"x0": 1e999, "x1": 1, "segment": "a"}]}', 422, "too large"),
    (json.dumps({"instances": [{**GOOD, "x0": 10**400}]}).encode(), 422, "too large"),
    # finite in JSON, infinite in the network's float32 (issue 17: these cost a 500)
    (json.dumps({"instances": [{**GOOD, "x0": 1e300}]}).encode(), 422, "'x0': 1e+300 is outside the range of a 32"),
    (json.dumps({"instances": [{**GOOD, "x1": -1e39}]}).encode(), 422, "'x1': -1e+39 is outside the range"),
    (b"[" * 200_000, 400, "depth limit exceeded"),
    (b'{"instances": [{"x0": 1, "x1": 1, "segment": "\ud800"}]}', 400, "not valid JSON"),
    (b'\xff\xfe{"instances": []}', 400, "not valid JSON"),
    (json.dumps({"instances": [GOOD], "user_id": {"id": 1}}).encode(), 422, "user_id must be a string or an integer"),
    (json.dumps({"instances": [GOOD], "user_id": [1, 2]}).encode(), 422, "user_id must be a string or an integer"),
    (json.dumps({"instances": [GOOD], "user_id": True}).encode(), 422, "user_id must be a string or an integer"),
    (json.dumps({"instances": [GOOD], "request_id": 1.5}).encode(), 422, "request_id must be a string or an int"),
    (json.dumps({"instances": [GOOD], "request_id": "r" * 257}).encode(), 422, "request_id is over 256 characters"),
    (json.dumps({"instances": [GOOD], "user_id": 2**64}).encode(), 422, "integer ids must fit in 64 bits"),
    (json.dumps({"instances": [{**GOOD, "segment": [[[["deep"]]]]}]}).encode(), 422, "got list a list of 1"),
    (json.dumps({"instances": [GOOD] * 11}).encode(), 413, "over the limit of 10"),
    (json.dumps({"instances": [GOOD], "extra": 1}).encode(), 422, "unknown top-level field(s): extra"),
]


@pytest.mark.parametrize(("body", "status", "text"), MALFORMED)
def test_malformed_requests_get_a_4xx_naming_the_problem(body, status, text):
    with pytest.raises(RequestError) as err:
        validate_instances(parse_body(body), SCHEMA, max_rows=10)
    assert err.value.status == status
    assert text in err.value.message


def test_problems_across_rows_are_listed_together():
    body = json.dumps({"instances": [{"x0": 1, "segment": "a"}, {**GOOD, "x1": "high"}]}).encode()
    with pytest.raises(RequestError) as err:
        validate_instances(parse_body(body), SCHEMA, max_rows=10)
    assert "instance 0: missing field(s): x1" in err.value.message
    assert "instance 1: field 'x1'" in err.value.message


def test_valid_request_gives_arrays_in_schema_order():
    rows = validate_instances({"instances": [{"segment": "b", "x1": 2, "x0": 1.5}, {"segment": "z", "x1": 2**70,
                                                                                  "x0": -3}], "user_id": "u1"},
                              SCHEMA, max_rows=10)
    assert rows.numeric.dtype == np.float64 and rows.numeric.tolist() == [[1.5, 2.0], [-3.0, float(2**70)]]
    assert rows.categorical == [["b", "z"]] and len(rows) == 2


def test_nullable_features_take_null_and_categories_take_their_codes():
    schema = SCHEMA.model_copy(update={"nullable": ["x1", "segment"], "boolean": ["x0"]})
    rows = validate_instances({"instances": [{"x0": True, "x1": None, "segment": None},
                                             {"x0": False, "x1": 2, "segment": 7},
                                             {"x0": 1, "x1": 2.5, "segment": 7.0}]}, schema, max_rows=10)
    assert rows.numeric[0, 0] == 1.0 and np.isnan(rows.numeric[0, 1]) and rows.numeric[1, 0] == 0.0
    assert rows.categorical == [[None, "7", "7"]]


def test_rows_of_several_requests_concatenate_in_order():
    first = validate_instances({"instances": [GOOD]}, SCHEMA, 10)
    second = validate_instances({"instances": [{**GOOD, "x0": 9, "segment": "b"}] * 2}, SCHEMA, 10)
    numeric, categorical = ValidRows.concat([first, second])
    assert numeric[:, 0].tolist() == [0.5, 9, 9] and categorical == [["a", "b", "b"]]
    assert ValidRows.concat([first]) == (first.numeric, first.categorical)


def test_ids_within_bounds_are_accepted():
    for user_id in ("u" * 256, 12345, -(2**63), 2**64 - 1):
        frame = validate_instances({"instances": [GOOD], "user_id": user_id, "request_id": "r1"}, SCHEMA, 10)
        assert len(frame) == 1


def test_messages_stay_short_whatever_the_client_sends():
    huge_key = "k" * 100_000
    for payload in ({"instances": [GOOD], huge_key: 1}, {"instances": [{**GOOD, huge_key: 1}]},
                    {"instances": [{**GOOD, "x0": "v" * 100_000}]}):
        with pytest.raises(RequestError) as err:
            validate_instances(payload, SCHEMA, max_rows=10)
        assert err.value.status == 422 and len(err.value.message) < 300, err.value.message


@pytest.mark.parametrize("outputs", [np.array([[0.1, 0.2], [np.inf, 0.0]]), np.array([[np.nan, 1.0], [0.0, 1.0]]),
                                     np.array([1.0, -np.inf])])
def test_non_finite_model_outputs_are_the_callers_422(outputs):
    with pytest.raises(RequestError) as err:
        check_outputs(outputs)
    assert err.value.status == 422 and "inputs out of range" in err.value.message


def test_finite_outputs_pass():
    check_outputs(np.array([[0.1, 3e38], [-3e38, 0.0]], dtype=np.float32))


@pytest.mark.parametrize(("labels", "regression", "text"), [
    ("a", False, "expected 2 label(s)"), (["a"], False, "expected 2 label(s)"),
    (["a", [1]], False, "label 1: expected a class"), (["a", None], False, "label 1: expected a class"),
    (["a", {"k": 1}], False, "label 1: expected a class"), (["a", "b" * 300], False, "over 256"),
    ([1.0, "2"], True, "label 1: regression labels must be finite numbers"),
    ([1.0, True], True, "label 1: regression"), ([1e308 * 10, 1.0], True, "label 0: regression"),
])
def test_feedback_labels_are_checked_before_they_are_kept(labels, regression, text):
    with pytest.raises(RequestError) as err:
        check_labels(labels, 2, regression)
    assert err.value.status == 422 and text in err.value.message


def test_oversized_body_is_refused():
    with pytest.raises(RequestError) as err:
        parse_body(b" " * (9 * 1024 * 1024))
    assert err.value.status == 413
