"""Property-based tests (hypothesis) of the ingestion validators and id handling: whatever a client
sends, a validator either returns clean values or raises ValidationFailed, never anything else."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recsys.errors import PayloadTooLarge, ValidationFailed
from recsys.validation import (
    EXTERNAL_ID_PATTERN,
    MAX_CATEGORIES,
    clean_attributes,
    clean_batch,
    clean_external_id,
    clean_item_fields,
    is_external_id,
    parse_timestamp,
)

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

ID_ALPHABET = st.sampled_from("abcXYZ019_.:@/-")
# What a JSON column can hold: finite numbers only (jsonb has no Infinity or NaN).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def holds_nul(value) -> bool:
    """Whether any string in a JSON-shaped value, key or leaf, holds a NUL (PostgreSQL's text refuses
    it). Walks the value: its JSON text would also show a literal backslash-u-0000 a client typed."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_nul(v) for v in value)
    return False


@given(st.text(ID_ALPHABET, min_size=1, max_size=128))
def test_an_id_is_accepted_exactly_when_the_openapi_pattern_matches_it(value):
    assert is_external_id(value) == (re.fullmatch(EXTERNAL_ID_PATTERN, value) is not None)


@given(st.from_regex(EXTERNAL_ID_PATTERN, fullmatch=True))
def test_every_id_the_schema_allows_is_accepted_unchanged(value):
    assert clean_external_id(value) == value


@given(st.one_of(st.text(max_size=200), JSON))
def test_anything_else_is_refused_with_a_validation_error(value):
    if isinstance(value, str) and re.fullmatch(EXTERNAL_ID_PATTERN, value):
        return
    try:
        clean_external_id(value)
    except ValidationFailed as error:
        assert error.details
    else:
        raise AssertionError(f"accepted {value!r}")


@given(st.from_regex(EXTERNAL_ID_PATTERN, fullmatch=True))
def test_accepted_ids_survive_a_url_path_unchanged(value):
    # No "." or ".." segment that an HTTP client would resolve away before sending.
    segments = value.split("/")
    assert "." not in segments and ".." not in segments


@given(JSON)
@settings(max_examples=200)
def test_item_fields_validator_returns_clean_fields_or_a_validation_error(body):
    try:
        cleaned = clean_item_fields(body)
    except ValidationFailed:
        return
    assert set(cleaned) <= {"title", "text", "categories", "attributes", "is_hidden", "published_at"}


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "title": st.text(max_size=50),
            "text": st.text(max_size=50),
            "categories": st.lists(
                st.text(st.characters(exclude_characters="\x00"), max_size=20), max_size=MAX_CATEGORIES
            ),
            "attributes": st.dictionaries(st.text(max_size=8), JSON, max_size=4),
            "is_hidden": st.booleans(),
            "published_at": st.none() | st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
        },
    )
)
def test_valid_item_bodies_are_accepted_and_hold_no_nul_for_postgresql(body):
    try:
        cleaned = clean_item_fields(body)
    except ValidationFailed as error:
        # The only things a well-typed body can get wrong: a date that leaves the calendar in UTC,
        # and an attribute name holding NUL.
        assert "published_at" in error.details or names_hold_nul(body.get("attributes"))
        return
    assert not holds_nul(cleaned)
    assert all(c.strip() and len(c) <= 128 for c in cleaned.get("categories", []))


def names_hold_nul(value) -> bool:
    if isinstance(value, dict):
        return any("\x00" in k or names_hold_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(names_hold_nul(v) for v in value)
    return False


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6))
@example({"\\u0000": None})  # a client's literal backslash text, kept as sent (CI's hypothesis found it)
@example({"a": ["\x00", {"b": "x\x00"}]})
@example({"price": 10, "price\x00": 99999})  # dropping NUL from names let the second overwrite the first
def test_attributes_keep_their_shape_without_nul_and_names_holding_nul_are_refused(value):
    if names_hold_nul(value):
        with pytest.raises(ValidationFailed, match="NUL"):
            clean_attributes(value)
        return
    cleaned = clean_attributes(value)

    assert not holds_nul(cleaned)
    assert set(value) == set(cleaned)


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=4), st.sampled_from([float("inf"), float("nan")]))
def test_attributes_holding_a_non_finite_number_are_refused(value, number):
    with_number = {**value, "deep": [{"x": number}]}
    try:
        clean_attributes(with_number)
    except ValidationFailed as error:
        assert error.details == {"attributes": ["not a finite number"]}
    else:
        raise AssertionError("a non-finite number was accepted")


@given(st.datetimes(timezones=st.timezones()))
def test_zoned_timestamps_parse_to_the_same_instant_or_are_out_of_range(moment):
    try:
        parsed = parse_timestamp(moment.isoformat())
    except ValidationFailed as error:
        assert error.details == {"timestamp": ["out of range"]}
        return
    # The instant the string names (for a wall time a DST change makes ambiguous, its written offset's).
    assert parsed == datetime.fromisoformat(moment.isoformat()) and parsed.tzinfo == UTC


@given(st.datetimes())
def test_naive_timestamps_are_refused(moment):
    try:
        parse_timestamp(moment.isoformat())
    except ValidationFailed:
        return
    raise AssertionError("a naive timestamp was accepted")


@given(st.lists(st.integers(), max_size=30), st.integers(min_value=1, max_value=20))
def test_batches_are_bounded_by_rows(rows, max_rows):
    try:
        assert clean_batch({"items": rows}, "items", max_rows=max_rows) == rows
    except PayloadTooLarge:
        assert len(rows) > max_rows
