"""Property-based and example tests of the payload validators."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.errors import PayloadTooLarge, ValidationFailed
from recsys.validation import clean_batch, clean_external_id, clean_interaction, is_external_id, parse_timestamp

ID_ALPHABET = string.ascii_letters + string.digits + "_.:@-"
WEIGHTS = {"view": (1.0, False), "rating": (1.0, True), "dislike": (-4.0, False)}
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@given(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_every_id_of_the_documented_alphabet_is_accepted(value):
    # Reserved: the ids that name endpoints, and "." and ".." (HTTP clients resolve them away).
    if value not in {"batch", "popular", ".", ".."}:
        assert clean_external_id(value) == value


@pytest.mark.parametrize("value", ["batch", "popular", ".", ".."])
def test_reserved_ids_of_the_alphabet_are_rejected(value):
    with pytest.raises(ValidationFailed):
        clean_external_id(value)


@given(st.text(min_size=0, max_size=200))
def test_ids_outside_the_alphabet_or_length_are_rejected(value):
    valid = 1 <= len(value) <= 128 and all(c in ID_ALPHABET + "/" for c in value)
    if not valid:
        with pytest.raises(ValidationFailed):
            clean_external_id(value)


@given(st.one_of(st.integers(), st.none(), st.lists(st.text()), st.floats()))
def test_non_string_ids_are_rejected(value):
    assert not is_external_id(value)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2026, 5, 1), timezones=st.timezones()))
def test_any_zoned_iso_timestamp_round_trips_to_utc(moment):
    if moment.utcoffset() is None:
        return
    assert parse_timestamp(moment.isoformat(), now=NOW) == moment.astimezone(UTC)


@pytest.mark.parametrize("value", ["2026-01-01", "2026-01-01T00:00:00", "01/02/2026", "", 1700000000, None])
def test_timestamps_without_zone_or_in_other_shapes_are_rejected(value):
    with pytest.raises(ValidationFailed):
        parse_timestamp(value, now=NOW)


def test_timestamps_more_than_a_day_ahead_are_rejected():
    assert parse_timestamp((NOW + timedelta(hours=23)).isoformat(), now=NOW)
    with pytest.raises(ValidationFailed):
        parse_timestamp((NOW + timedelta(hours=25)).isoformat(), now=NOW)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_rating_weight_is_its_value(value):
    row = {"user": "u", "item": "i", "type": "rating", "value": value}
    assert clean_interaction(row, weights=WEIGHTS, now=NOW).weight == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e10, "4", [4]])
def test_non_finite_or_huge_values_are_rejected(value):
    with pytest.raises(ValidationFailed):
        clean_interaction({"user": "u", "item": "i", "type": "rating", "value": value}, weights=WEIGHTS, now=NOW)


def test_missing_timestamp_defaults_to_now():
    event = clean_interaction({"user": "u", "item": "i", "type": "dislike"}, weights=WEIGHTS, now=NOW)
    assert (event.timestamp, event.weight) == (NOW, -4.0)


def test_batch_over_the_row_limit_is_too_large():
    with pytest.raises(PayloadTooLarge):
        clean_batch({"rows": [{}] * 11}, "rows", max_rows=10)


def test_batch_envelope_rejects_unknown_keys():
    with pytest.raises(ValidationFailed):
        clean_batch({"rows": [], "extra": 1}, "rows", max_rows=10)


def test_the_id_rule_is_written_once():
    root = Path(__file__).resolve().parents[2]
    sources = [
        p for d in ("recsys", "api", "embeddings") for p in (root / d).rglob("*.py") if "migrations" not in p.parts
    ]

    holders = [p.relative_to(root).as_posix() for p in sources if "A-Za-z0-9_.:@/-]{" in p.read_text()]

    assert holders == ["recsys/ids.py"]
