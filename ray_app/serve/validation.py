"""Request validation against a model's FeatureSchema: every problem becomes a 4xx with a readable message."""

from __future__ import annotations

import json
import math

import pandas as pd

from ray_app.package import FeatureSchema

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PROBLEMS_LISTED = 5


class RequestError(Exception):
    """A request the model cannot answer; `status` is the HTTP code to return."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _reject_constant(name: str):
    raise RequestError(422, f"{name} is not allowed: features must be finite numbers")


def parse_body(body: bytes) -> object:
    """Decode a JSON body; NaN and Infinity literals are refused."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
    if not body.strip():
        raise RequestError(400, 'empty body: send JSON like {"instances": [{...feature: value...}]}')
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def _check_value(schema: FeatureSchema, name: str, value: object) -> str | None:
    if name in schema.categorical:
        if not isinstance(value, str):
            return f"field {name!r}: expected a string category, got {type(value).__name__} {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"field {name!r}: expected a number, got {type(value).__name__} {value!r}"
    try:
        if not math.isfinite(float(value)):
            return f"field {name!r}: {value!r} is not a finite number"
    except OverflowError:
        return f"field {name!r}: {value!r} is too large"
    return None


def validate_instances(payload: object, schema: FeatureSchema, max_rows: int) -> pd.DataFrame:
    """Check `{"instances": [{feature: value, ...}, ...]}` against the schema and return a typed DataFrame."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError(422, 'expected a JSON object with a list under "instances"')
    unknown_keys = sorted(set(payload) - {"instances", "user_id", "request_id"})
    if unknown_keys:
        raise RequestError(422, f"unknown top-level field(s): {', '.join(unknown_keys)}")
    rows = payload["instances"]
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, '"instances" must be a non-empty list of objects')
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} instances is over the limit of {max_rows} per request")
    expected = set(schema.features)
    problems: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"instance {i}: expected an object of feature values, got {type(row).__name__}")
            continue
        missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
        if missing:
            problems.append(f"instance {i}: missing field(s): {', '.join(missing)}")
        if extra:
            problems.append(f"instance {i}: unknown field(s): {', '.join(extra)}")
        problems += [f"instance {i}: {p}" for name in schema.features if name in row
                     if (p := _check_value(schema, name, row[name]))]
        if len(problems) >= MAX_PROBLEMS_LISTED:
            break
    if problems:
        raise RequestError(422, "; ".join(problems[:MAX_PROBLEMS_LISTED]))
    frame = pd.DataFrame.from_records(rows, columns=schema.features)
    return frame.astype({name: "float64" for name in schema.numeric})
