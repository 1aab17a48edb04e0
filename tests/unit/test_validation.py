"""Request validation: every malformed request gets a 4xx status and a message that names the problem."""

import json

import pytest

from ray_app.package import FeatureSchema
from ray_app.serve.validation import RequestError, parse_body, validate_instances

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
    (json.dumps({"instances": [{**GOOD, "x1": None}]}).encode(), 422, "'x1': expected a number, got NoneType"),
    (json.dumps({"instances": [{**GOOD, "segment": 3}]}).encode(), 422, "'segment': expected a string category"),
    (b'{"instances": [{"x0": 1e999, "x1": 1, "segment": "a"}]}', 422, "inf is not a finite number"),
    (json.dumps({"instances": [{**GOOD, "x0": 10**400}]}).encode(), 422, "too large"),
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


def test_valid_request_gives_typed_frame_in_schema_order():
    frame = validate_instances({"instances": [{"segment": "b", "x1": 2, "x0": 1.5}], "user_id": "u1"},
                               SCHEMA, max_rows=10)
    assert list(frame.columns) == ["x0", "x1", "segment"]
    assert frame["x1"].dtype == "float64" and frame.loc[0, "segment"] == "b"


def test_oversized_body_is_refused():
    with pytest.raises(RequestError) as err:
        parse_body(b" " * (9 * 1024 * 1024))
    assert err.value.status == 413
