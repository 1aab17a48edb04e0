"""Hypothesis strategies for HTTP bodies, and the properties every route's answer must keep.

Profiles: `ci` (the default: bounded examples, no example database) and `nightly` (many more examples), picked with
HYPOTHESIS_PROFILE=nightly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("ci", max_examples=60, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("nightly", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXTREME_FLOATS = [1e300, -1e300, 1e308, -1.7976931348623157e308, 3.5e38, -3.5e38, 3.4e38, 1e38, 5e-324, -0.0,
                  1e-45, 2**53 + 1]
EXTREME_INTS = [2**63 - 1, -(2**63), 2**64, 10**30, -(10**30)]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from(EXTREME_FLOATS + EXTREME_INTS)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def encode(value: object, ascii_only: bool = True) -> bytes:
    """JSON bytes; lone surrogates in strings become invalid UTF-8 when `ascii_only` is off (byte damage too)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def damaged(draw, body: bytes) -> bytes:
    """The body truncated, with a byte replaced, or with random bytes inserted."""
    if not body:
        return draw(st.binary(max_size=20))
    at = draw(st.integers(0, len(body) - 1))
    how = draw(st.sampled_from(["truncate", "replace", "insert"]))
    if how == "truncate":
        return body[:at]
    junk = draw(st.binary(min_size=1, max_size=4))
    return body[:at] + junk + body[at + (1 if how == "replace" else 0):]


def deep(depth: int, opener: str = "[") -> bytes:
    return (opener * depth).encode()


unicode = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)  # no lone surrogates: valid UTF-8


@st.composite
def valid_rows(draw, schema: dict, max_rows: int = 3) -> list[dict]:
    """Rows the model must answer: numbers in a plausible range, categories seen in training or new ones."""
    def row() -> dict:
        values = {name: draw(st.floats(-1e3, 1e3) | st.integers(-1000, 1000)) for name in schema["numeric"]}
        for name, seen in schema["categorical"].items():
            values[name] = draw(st.sampled_from(seen) | unicode) if seen else draw(unicode)
        return values

    return [row() for _ in range(draw(st.integers(1, max_rows)))]


@st.composite
def corrupted_rows(draw, schema: dict) -> list[dict]:
    """Valid rows with one field of one row replaced by any JSON value (extreme numbers included), dropped,
    or joined by a field the model does not know."""
    rows = draw(valid_rows(schema))
    row = rows[draw(st.integers(0, len(rows) - 1))]
    name = draw(st.sampled_from(sorted(row)))
    how = draw(st.sampled_from(["replace", "drop", "add"]))
    if how == "replace":
        row[name] = draw(json_values)
    elif how == "drop":
        del row[name]
    else:
        row[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    return rows


ids = st.none() | st.text(max_size=300) | st.integers(-(2**80), 2**80) | json_values


def valid_id(value: object) -> bool:
    """What the routes take as a `user_id` or `request_id`: a string of at most 256 characters (valid UTF-8) or an
    integer that JSON parsing keeps an integer (64 bits)."""
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= 256 and not any(0xD800 <= ord(c) < 0xE000 for c in value)
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64


@dataclass
class Case:
    """A request body, and what its answer must be: a 200 with `rows` predictions, a 4xx (`refused`), or either."""

    body: bytes
    rows: int | None = None
    refused: bool = False


@st.composite
def predict_bodies(draw, schema: dict) -> Case:
    """Every kind of body a client might send to `/predict`."""
    kind = draw(st.sampled_from(["valid", "corrupted", "ids", "json", "damaged", "deep", "unicode"]))
    if kind in ("valid", "ids"):
        rows = draw(valid_rows(schema))
        payload: dict = {"instances": rows}
        if kind == "ids":
            payload.update({k: v for k in ("user_id", "request_id") if (v := draw(ids)) is not None})
        valid = all(valid_id(payload.get(k)) for k in ("user_id", "request_id"))
        return Case(encode(payload), len(rows)) if valid else Case(encode(payload), refused=True)
    if kind == "corrupted":
        return Case(encode({"instances": draw(corrupted_rows(schema))}))
    if kind == "json":
        return Case(encode(draw(json_values | st.fixed_dictionaries({"instances": json_values}))))
    if kind == "damaged":
        return Case(draw(damaged(encode({"instances": draw(valid_rows(schema))}))))
    if kind == "deep":
        depth = draw(st.sampled_from([1_000, 1_025, 5_000, 200_000]))
        return Case(deep(depth, draw(st.sampled_from(["[", '{"a":']))), refused=True)
    rows = draw(valid_rows(schema))
    rows[0][next(iter(schema["categorical"]), "x")] = draw(st.text(min_size=1, max_size=20))
    return Case(encode({"instances": rows}, ascii_only=False))


def finite_numbers_only(value: object) -> bool:
    """No NaN and no infinity."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite_numbers_only(v) for v in value)
    if isinstance(value, dict):
        return all(finite_numbers_only(v) for v in value.values())
    return True


def assert_well_answered(response: httpx.Response, rows: int | None = None, refused: bool = False) -> None:
    """Never a 5xx; a 4xx carries an `error` message; a 200 holds finite numbers only. With `rows` (a valid
    request), it must be a 200 with one prediction per row; with `refused`, a 4xx."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if rows is not None:
        assert response.status_code == 200, (response.status_code, response.text[:500])
    if refused:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"], response.text[:500]
        return
    assert finite_numbers_only(body), response.text[:500]
    for key in ("predictions", "probabilities"):  # orjson writes NaN as null: none may stand in a model's answer
        assert key not in body or "null" not in json.dumps(body[key]), response.text[:500]
    if rows is not None:
        assert len(body["predictions"]) == rows, response.text[:500]
