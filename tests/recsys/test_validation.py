"""Property-based and example tests of the payload validators."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.errors import PayloadTooLarge, ValidationFailed
from recsys.validation import clean_attributes, clean_batch, clean_external_id, is_external_id, parse_timestamp

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

ID_ALPHABET = string.ascii_letters + string.digits + "_.:@-"


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


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()))
def test_any_zoned_iso_timestamp_round_trips_to_utc(moment):
    if moment.utcoffset() is None:
        return
    assert parse_timestamp(moment.isoformat()) == moment.astimezone(UTC)


@pytest.mark.parametrize("value", ["2026-01-01", "2026-01-01T00:00:00", "01/02/2026", "", 1700000000, None])
def test_timestamps_without_zone_or_in_other_shapes_are_rejected(value):
    with pytest.raises(ValidationFailed):
        parse_timestamp(value)


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan"), 1e999])
def test_attributes_with_a_non_finite_number_anywhere_are_rejected(number):
    for attributes in ({"x": number}, {"a": {"b": [1, number]}}):
        with pytest.raises(ValidationFailed, match="finite"):
            clean_attributes(attributes)


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

    # The character class, as a pattern (`[...]{` or `[...]+`), outside the module that owns it.
    holders = [p.relative_to(root).as_posix() for p in sources if re.search(r"A-Za-z0-9_\.:@/-\]", p.read_text())]

    assert holders == ["recsys/ids.py"]
