"""The event rules on their own (pure: no database): what is accepted, how it weighs, why a row is rejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.errors import ItemNotFound, ValidationFailed
from recsys.ingestion.readers import batch_events_read
from recsys.ingestion.rules import EPOCH, MIN_VALUE, EventRules, RowError, events_check, unknown_row_error
from recsys.validation import EXTERNAL_ID_PATTERN

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_US = (NOW - EPOCH) // timedelta(microseconds=1)
RULES = EventRules(
    names=("dislike", "purchase", "rating", "view"),
    weights=np.array([-4.0, 8.0, 1.0, 1.0]),
    uses_value=np.array([False, False, True, False]),
    value_min=0.0,
    value_max=10.0,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def check(row: object, rules: EventRules = RULES, now_us: int = NOW_US) -> tuple[dict[str, object], RowError | None]:
    """One row through the rules: its stored form (when accepted) and why it was rejected (when not)."""
    raw = batch_events_read([row])
    codes, rejected = events_check(raw, rules, now_us)
    if 0 in rejected:
        return {}, rejected[0]
    weight = float(rules.weights_of(codes, raw.values)[0])
    value = None if np.isnan(raw.values[0]) else float(raw.values[0])
    moment = EPOCH + timedelta(microseconds=int(raw.timestamps[0]))
    return {"type": rules.names[codes[0]], "value": value, "weight": weight, "timestamp": moment}, None


def event(**fields: object) -> dict[str, object]:
    return {"user": "u", "item": "i", "type": "view", **fields}


@given(st.just(0.0) | st.floats(min_value=MIN_VALUE, max_value=10))
def test_a_ratings_weight_is_its_value(value):
    stored, error = check(event(type="rating", value=value))
    assert error is None and stored["weight"] == value == stored["value"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "4", [4], True, 10**400])
def test_non_finite_or_non_numeric_values_are_rejected(value):
    _, error = check(event(type="rating", value=value))
    assert error is not None and error.fields == ("value",) and error.reason == "value must be a finite number"


@pytest.mark.parametrize("value", [-0.5, 10.5, 1e9, 1_000_000_000])
def test_ratings_outside_the_configured_range_are_rejected(value):
    _, error = check(event(type="rating", value=value))

    assert error is not None and error.domain_error().details == {"value": ["out of range"]}
    assert "between 0 and 10" in error.reason


def test_the_rating_range_is_the_configured_one():
    wide = EventRules(RULES.names, RULES.weights, RULES.uses_value, value_min=-5.0, value_max=100.0)

    assert check(event(type="rating", value=100), wide)[1] is None
    assert check(event(type="rating", value=-5), wide)[1] is None
    assert check(event(type="rating", value=100.5), wide)[1] is not None


def test_a_value_on_a_type_that_does_not_weigh_by_it_is_kept_but_bounded_only_by_the_absolute_limit():
    stored, _ = check(event(type="purchase", value=50))
    assert (stored["value"], stored["weight"]) == (50.0, 8.0)
    assert check(event(type="purchase", value=2e9))[1].reason == "value must lie within ±1e+09"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [1e-300, 5e-324, -1e-7, 9.9e-7])
def test_a_value_too_small_to_weigh_anything_is_rejected_and_zero_is_kept(value):
    # 1e-300 passed the 0-10 range, then its weight underflowed a float4 sum: 500s for its user and
    # a failing fold-in sweep for everyone (the probe of 2026-12-04)
    _, error = check(event(type="rating", value=value))
    assert error is not None and error.domain_error().details == {"value": ["too small"]}
    assert error.reason == "value must be 0 or at least 1e-06 in magnitude"
    stored, error = check(event(type="rating", value=0))
    assert error is None and stored["value"] == 0.0
    assert check(event(type="rating", value=1e-6))[1] is None
    # A type that does not weigh by its value keeps any value within ±1e9 (a price of 5e-7)
    assert check(event(type="purchase", value=5e-7))[1] is None


def test_a_rating_needs_a_value():
    _, error = check(event(type="rating"))
    assert error is not None and error.domain_error().details == {"value": ["required"]}


def test_a_missing_timestamp_is_now():
    stored, _ = check(event(type="dislike"))
    assert (stored["timestamp"], stored["weight"]) == (NOW, -4.0)


def test_timestamps_more_than_a_day_ahead_or_before_1970_are_rejected():
    assert check(event(timestamp=(NOW + timedelta(hours=23)).isoformat()))[1] is None
    for moment in (NOW + timedelta(hours=25), datetime(1969, 12, 31, 23, 59, tzinfo=UTC)):
        _, error = check(event(timestamp=moment.isoformat()))
        assert error is not None and error.domain_error().details == {"timestamp": ["out of range"]}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (event(user="bad id!"), "user"),
        (event(item="x" * 129), "item"),
        (event(type="teleport"), "type"),
        (event(timestamp="2026-01-01T00:00:00"), "timestamp"),
        (event(timestamp="0001-01-01T00:00:00+05:00"), "timestamp"),
        (event(timestamp=1700000000), "timestamp"),
        (event(colour="red"), "colour"),
        ({"user": "u", "item": "i"}, "type"),
        ("nonsense", "non_field_errors"),
    ],
)
def test_a_rejected_row_names_its_field_for_the_api(row, field):
    _, error = check(row)
    assert error is not None
    body = error.domain_error()
    assert isinstance(body, ValidationFailed) and field in body.details and body.message


def test_an_unknown_item_is_a_not_found_error_for_the_api():
    assert isinstance(unknown_row_error("item", "ghost").domain_error(), ItemNotFound)


@given(JSON, st.integers(min_value=0, max_value=2**60))
def test_the_rules_accept_a_row_or_reject_it_never_anything_else(row, now_us):
    check(row, now_us=now_us)


@given(
    user=st.from_regex(EXTERNAL_ID_PATTERN, fullmatch=True),
    item=st.from_regex(EXTERNAL_ID_PATTERN, fullmatch=True),
    kind=st.sampled_from(RULES.names),
    value=st.none() | (st.just(0.0) | st.floats(min_value=MIN_VALUE, max_value=10)),
    age=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20_000)),
)
def test_a_valid_event_weighs_its_types_weight_times_its_value(user, item, kind, value, age):
    row = {"user": user, "item": item, "type": kind, "timestamp": (NOW - age).isoformat()}
    if value is not None:
        row["value"] = value
    stored, error = check(row)
    if error is not None:
        assert (kind == "rating" and value is None) or error.fields == ("timestamp",)
        return
    weight = {"dislike": -4.0, "purchase": 8.0, "rating": 1.0, "view": 1.0}[kind]
    assert stored["weight"] == (weight * value if kind == "rating" else weight)  # type: ignore[operator]
    assert stored["timestamp"] == NOW - age


# A batch of well-formed event objects is read a column at a time; any other batch row by row. Both
# readings give the same columns and the same errors, whatever the rows.
WELL_FORMED = st.fixed_dictionaries(
    {
        "user": st.sampled_from(["u1", "u2", "user/7", "batch"]),
        "item": st.sampled_from(["i1", "i2", "x:y"]),
        "type": st.sampled_from(["view", "rating", "nope"]),
    },
    optional={
        "value": st.none() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False),
        "timestamp": st.none()
        | st.sampled_from(
            [
                "2026-05-31T10:00:00Z",
                "2026-05-31T10:00:00.123456+05:30",
                "2026-05-31T10:00:00",  # no zone
                "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
                "9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
                "1969-12-31T23:59:59Z",
                "2999-01-01T00:00:00Z",
                "not a time",
            ]
        ),
        "recommendation_id": st.none() | st.sampled_from(["r1", "r.kx2.AbCdEfGhIjKl", "", "x" * 81, 'a"{b}\\']),
    },
)
ODD = st.one_of(
    JSON,
    WELL_FORMED.map(lambda row: {**row, "user": 5}),
    WELL_FORMED.map(lambda row: {**row, "value": True}),
    WELL_FORMED.map(lambda row: {**row, "timestamp": 1_700_000_000}),
    WELL_FORMED.map(lambda row: {**row, "extra": 1}),
    WELL_FORMED.map(lambda row: {k: v for k, v in row.items() if k != "item"}),
    WELL_FORMED.map(lambda row: {**row, "value": 10**400}),
)


def _same_reading(rows: list[object]) -> None:
    from recsys.ingestion.readers import json_rows_events_read, json_rows_events_read_each

    lines = list(range(len(rows)))
    expected = json_rows_events_read_each(lines, rows)
    got = json_rows_events_read(lines, rows)
    assert (got.users, got.items, got.types) == (expected.users, expected.items, expected.types)
    assert np.array_equal(got.values, expected.values, equal_nan=True)
    assert np.array_equal(got.timestamps, expected.timestamps)
    assert got.recommendation_ids == expected.recommendation_ids
    assert {k: (e.reason, e.detail, e.fields) for k, e in got.errors.items()} == {
        k: (e.reason, e.detail, e.fields) for k, e in expected.errors.items()
    }


@given(st.lists(WELL_FORMED, max_size=8))
def test_well_formed_batches_read_by_columns_as_row_by_row(rows):
    _same_reading(rows)


@given(st.lists(st.one_of(WELL_FORMED, ODD), max_size=8))
def test_any_batch_reads_the_same_by_either_path(rows):
    _same_reading(rows)


def test_a_batch_of_well_formed_rows_takes_the_column_reading():
    from recsys.ingestion.rules import plain_events_columns

    rows = [
        {"user": "u1", "item": "i1", "type": "view", "timestamp": "2026-05-31T10:00:00Z"},
        {"user": "u2", "item": "i2", "type": "rating", "value": 4, "recommendation_id": "r1"},
    ]
    users, items, types, values, stamps, ids = plain_events_columns(rows)

    assert (users, items, types, ids) == (["u1", "u2"], ["i1", "i2"], ["view", "rating"], [None, "r1"])
    assert np.isnan(values[0]) and values[1] == 4.0
    assert stamps[0] == (datetime(2026, 5, 31, 10, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
    assert plain_events_columns([*rows, {"user": "u3", "item": "i3"}]) is None  # a row missing its type
