"""Compiled expressions against PostgreSQL: exactly the matching items, and never a failing statement."""

from __future__ import annotations

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.rules.expressions import expression_compile
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db

ITEMS = [
    {
        "id": "cheap",
        "title": "Cheap mug",
        "categories": ["sale", "kitchen"],
        "attributes": {"price": 9.5, "in_stock": True, "tags": ["blue"]},
    },
    {"id": "dear", "title": "Dear lamp", "categories": ["home"], "attributes": {"price": 120, "in_stock": True}},
    {
        "id": "odd",
        "title": "Odd one",
        "categories": ["sale"],
        "attributes": {"price": "ask us", "in_stock": False, "colour": None},
    },
    {"id": "bare", "title": "Bare", "categories": [], "attributes": {}, "published_at": "2026-02-01T00:00:00Z"},
]


@pytest.fixture
def catalogue(db):
    items_upsert(rows=ITEMS)


def matching(text: str) -> set[str]:
    compiled = expression_compile(text, prefix="t")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT i.external_id FROM recsys_item i WHERE {compiled.sql}", compiled.params)
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attributes.price < 50", {"cheap"}),  # "ask us" is a string: not less than 50, and no error
        ("attributes.price >= 9.5", {"cheap", "dear"}),
        ("attributes.price = 120", {"dear"}),
        ("attributes.in_stock = true AND attributes.price < 50", {"cheap"}),
        ('categories CONTAINS "sale"', {"cheap", "odd"}),
        ('categories IN ("home", "kitchen")', {"cheap", "dear"}),
        ('NOT categories CONTAINS "sale"', {"dear", "bare"}),
        ("attributes.in_stock != true", {"odd", "bare"}),  # != is NOT =: items without it match
        ("attributes.colour IS NULL", {"cheap", "dear", "odd", "bare"}),  # a JSON null is null too
        ("attributes.in_stock IS NOT NULL", {"cheap", "dear", "odd"}),
        ('attributes.tags CONTAINS "blue"', {"cheap"}),
        ('attributes.price IN (120, "ask us")', {"dear", "odd"}),
        ('attributes.price NOT IN (120, "ask us")', {"cheap", "bare"}),
        ('id IN ("cheap", "bare") OR title = "Dear lamp"', {"cheap", "bare", "dear"}),
        ('title > "Cheap mug"', {"dear", "odd"}),
        ('published_at >= "2026-01-01"', {"bare"}),
        ("published_at IS NULL", {"cheap", "dear", "odd"}),
        ('created_at > "2000-01-01T00:00:00Z"', {"cheap", "dear", "odd", "bare"}),
        ("attributes.price > true", set()),  # a boolean against numbers: another type, no match
    ],
)
def test_a_filter_selects_exactly_the_matching_items(catalogue, text, expected):
    assert matching(text) == expected


_values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    # Valid strings only: NUL and lone surrogates are refused by the parser (test_expressions.py).
    st.text(alphabet=st.characters(blacklist_characters='\x00"\\', blacklist_categories=("Cs",)), max_size=8).map(
        lambda s: f'"{s}"'
    ),
    st.sampled_from(["true", "false"]),
)
_attribute = st.sampled_from(["price", "in_stock", "tags", "colour", "missing"]).map(lambda k: f"attributes.{k}")
_predicate = st.one_of(
    st.tuples(_attribute, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), _values).map(" ".join),
    st.tuples(_attribute, st.sampled_from(["IN", "NOT IN"]), st.lists(_values, min_size=1, max_size=3)).map(
        lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])})"
    ),
    st.tuples(_attribute, st.sampled_from(["CONTAINS", "IS NULL", "IS NOT NULL"]), _values).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}" if t[1] == "CONTAINS" else f"{t[0]} {t[1]}"
    ),
    st.sampled_from(['categories CONTAINS "sale"', 'id = "odd"', 'published_at < "2030-01-01"', 'title >= "B"']),
)
_expression = st.recursive(
    _predicate,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"NOT {e}"),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_expression)
def test_every_valid_expression_compiles_to_sql_that_runs(catalogue, text):
    found = matching(text)
    negated = matching(f"NOT ({text})")

    # Two-valued: an item matches an expression or its negation, never both, never neither.
    assert found | negated == {"cheap", "dear", "odd", "bare"}
    assert not found & negated
