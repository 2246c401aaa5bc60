"""The writer's array literals: what PostgreSQL reads back is what was sent, whatever the characters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ingestion.writer import floats_literal, ints_literal, ints_or_nulls_literal, sql_cursor, texts_literal

pytestmark = pytest.mark.django_db


def read_back(literal: str, kind: str) -> list:
    with sql_cursor() as cursor:
        cursor.execute(f"SELECT %s::{kind}", [literal])
        return cursor.fetchone()[0]


# Visible ASCII as recommendation ids allow, with the characters an array literal gives meaning to.
TEXT = st.text(alphabet=st.sampled_from([*'"\\{},; NULLnul', *map(chr, range(0x21, 0x7F))]), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), TEXT), max_size=20))
def test_texts_come_back_as_sent_with_none_as_null(values):
    assert read_back(texts_literal(values), "text[]") == values


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=20))
def test_int64_arrays_come_back_exactly(values):
    assert read_back(ints_literal(np.array(values, dtype=np.int64)), "int8[]") == values


def test_int16_codes_and_nullable_ints():
    assert read_back(ints_literal(np.array([0, 3, -1], dtype=np.int16)), "int2[]") == [0, 3, -1]
    assert read_back(ints_or_nulls_literal([7, None, 2**62]), "int8[]") == [7, None, 2**62]
    assert read_back(ints_or_nulls_literal([]), "int8[]") == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.just(math.nan)), max_size=20))
def test_floats_come_back_exactly_with_nan_as_nan(values):
    back = read_back(floats_literal(np.array(values, dtype=np.float64)), "float8[]")
    assert len(back) == len(values)
    for sent, got in zip(values, back, strict=True):
        assert (math.isnan(sent) and math.isnan(got)) or sent == got
