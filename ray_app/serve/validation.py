"""Request validation against a model's FeatureSchema: every problem becomes a 4xx with a readable message.

What the routes refuse, and how (the README's serving section lists the same):
- 400: an empty body, a body that is not UTF-8 JSON, or JSON nested deeper than 1,024 levels;
- 413: a body over 8 MiB, or more rows than the variant's `max_rows`;
- 422: a JSON value the model cannot take: NaN, Infinity, a number outside float32's range, a missing, unknown or
  mistyped feature, null for a feature that had no nulls in training, a `user_id`/`request_id` that is not a
  short string or an integer, and rows whose model output is not finite (`inputs out of range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import orjson
from starlette.responses import Response

from ray_app.data.preprocess import category_text

if TYPE_CHECKING:
    from ray_app.package import FeatureSchema

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PROBLEMS_LISTED = 5
MAX_ID_CHARS = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)  # ~3.4e38: beyond it a feature is inf in the network's float32
ID_FIELDS = ("user_id", "request_id")


class JSONAnswer(Response):
    """A JSON response rendered by orjson (numpy arrays and scalars included)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class RequestError(Exception):
    """A request the model cannot answer; `status` is the HTTP code to return."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def answer(self) -> JSONAnswer:
        return JSONAnswer({"error": self.message}, status_code=self.status)


def describe(value: object, limit: int = 40) -> str:
    """A short, always-printable account of a JSON value for an error message (never a recursive repr)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}..."
    return f"a {type(value).__name__} of {len(value)}" if isinstance(value, list | dict) else type(value).__name__


def parse_body(body: bytes) -> object:
    """Decode a JSON body (orjson: strict UTF-8, depth at most 1,024); NaN and Infinity literals are refused."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES}")
    if not body.strip():
        raise RequestError(400, 'empty body: send JSON like {"instances": [{...feature: value...}]}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        start = exc.pos - 1 if body[exc.pos - 1:exc.pos] == b"-" else exc.pos
        literal = next((word for word in ("NaN", "Infinity", "-Infinity") if body[start:].startswith(word.encode())),
                       None)
        if literal:
            raise RequestError(422, f"{literal} is not allowed: features must be finite numbers") from None
        if "infinity when parsed" in exc.msg:
            raise RequestError(422, f"the number at char {exc.pos} is too large: features must be finite numbers "
                                    f"within ±{FLOAT32_MAX:.1e}") from None
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def check_ids(payload: dict) -> None:
    """`user_id` and `request_id`, where given, are a string of at most MAX_ID_CHARS or a 64-bit integer: they
    become routing keys and log entries, not whatever object a client sends."""
    for name in ID_FIELDS:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():  # JSON parsing makes an integer beyond 64 bits a float
            raise RequestError(422, f"{name}: integer ids must fit in 64 bits; send longer ones as strings")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RequestError(422, f"{name} must be a string or an integer, got {describe(value)}")
        if len(str(value)) > MAX_ID_CHARS:
            raise RequestError(422, f"{name} is over {MAX_ID_CHARS} characters")


def _check_value(schema: FeatureSchema, name: str, value: object) -> str | None:
    if value is None:
        return None if name in schema.nullable else (f"field {name!r}: null is not allowed: the model saw no "
                                                      f"missing {name} in training")
    if name in schema.categorical:  # text; integer-coded (and boolean) categories are taken as their text
        if isinstance(value, str | int) or (isinstance(value, float) and math.isfinite(value)):
            return None
        return f"field {name!r}: expected a string category, got {type(value).__name__} {describe(value)}"
    if isinstance(value, bool):
        return None if name in schema.boolean else f"field {name!r}: expected a number, got bool {value!r}"
    if not isinstance(value, int | float):
        return f"field {name!r}: expected a number, got {type(value).__name__} {describe(value)}"
    try:
        number = float(value)
    except OverflowError:
        return f"field {name!r}: {describe(value)} is too large"
    if not math.isfinite(number):
        return f"field {name!r}: {value!r} is not a finite number"
    if abs(number) > FLOAT32_MAX:
        return f"field {name!r}: {value!r} is outside the range of a 32-bit float (±{FLOAT32_MAX:.1e})"
    return None


def _category(value: object) -> str | None:
    """A category as sent, as training saw its kind: text as is, a code (7, 7.0, true) as its text, null kept."""
    return value if value is None or isinstance(value, str) else category_text(value)


def _names(names: list[str]) -> str:
    shown = ", ".join(describe(name, 30).strip("'") for name in names[:MAX_PROBLEMS_LISTED])
    return shown + (f" and {len(names) - MAX_PROBLEMS_LISTED} more" if len(names) > MAX_PROBLEMS_LISTED else "")


@dataclass
class ValidRows:
    """Validated rows as the model reads them: numeric features as one float64 array (rows x features, schema
    order), one list of values per categorical feature, and the rows as sent (kept for feedback)."""

    records: list[dict]
    numeric: np.ndarray
    categorical: list[list[str]]

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def concat(batch: list[ValidRows]) -> tuple[np.ndarray, list[list[str]]]:
        """The rows of several requests as one (numeric, categorical) pair, in order."""
        if len(batch) == 1:
            return batch[0].numeric, batch[0].categorical
        numeric = np.concatenate([rows.numeric for rows in batch])
        return numeric, [list(chain.from_iterable(columns))
                         for columns in zip(*(r.categorical for r in batch), strict=True)]


def validate_instances(payload: object, schema: FeatureSchema, max_rows: int) -> ValidRows:
    """Check `{"instances": [{feature: value, ...}, ...]}` against the schema; no DataFrame is built."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError(422, 'expected a JSON object with a list under "instances"')
    if len(payload) > 1:
        unknown_keys = sorted(set(payload) - {"instances", *ID_FIELDS})
        if unknown_keys:
            raise RequestError(422, f"unknown top-level field(s): {_names(unknown_keys)}")
        check_ids(payload)
    rows = payload["instances"]
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, '"instances" must be a non-empty list of objects')
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} instances is over the limit of {max_rows} per request")
    features = schema.features
    expected = set(features)
    problems: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"instance {i}: expected an object of feature values, got {type(row).__name__}")
            continue
        if row.keys() != expected:
            missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
            if missing:
                problems.append(f"instance {i}: missing field(s): {_names(missing)}")
            if extra:
                problems.append(f"instance {i}: unknown field(s): {_names(extra)}")
        problems += [f"instance {i}: {p}" for name in features if name in row
                     if (p := _check_value(schema, name, row[name]))]
        if len(problems) >= MAX_PROBLEMS_LISTED:
            break
    if problems:
        raise RequestError(422, "; ".join(problems[:MAX_PROBLEMS_LISTED]))
    numeric = np.array([[row[name] for name in schema.numeric] for row in rows], dtype=np.float64)
    return ValidRows(rows, numeric.reshape(len(rows), len(schema.numeric)),  # null: NaN
                     [[_category(row[name]) for row in rows] for name in schema.categorical])


def check_outputs(outputs: np.ndarray) -> None:
    """Rows whose network output is not finite (inputs far outside the training range) are the caller's: 422."""
    bad = np.flatnonzero(~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1))
    if len(bad):
        listed = ", ".join(str(i) for i in bad[:MAX_PROBLEMS_LISTED]) + (" ..." if len(bad) > MAX_PROBLEMS_LISTED
                                                                         else "")
        raise RequestError(422, f"inputs out of range: the model's output for instance(s) {listed} is not finite")


def check_labels(labels: object, expected: int, regression: bool) -> list:
    """Feedback labels: a list of `expected` scalars (numbers for regression), checked before anything is kept."""
    if not isinstance(labels, list) or len(labels) != expected:
        raise RequestError(422, f"expected {expected} label(s), one per instance")
    for i, label in enumerate(labels):
        if regression:
            if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(float(label)):
                raise RequestError(422, f"label {i}: regression labels must be finite numbers, got "
                                        f"{describe(label)}")
        elif isinstance(label, list | dict) or label is None:
            raise RequestError(422, f"label {i}: expected a class (string, number or boolean), got "
                                    f"{describe(label)}")
        elif isinstance(label, str) and len(label) > MAX_ID_CHARS:
            raise RequestError(422, f"label {i}: over {MAX_ID_CHARS} characters")
    return labels
