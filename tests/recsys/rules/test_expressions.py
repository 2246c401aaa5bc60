"""The expression language: what parses, what is refused (and where), and that nothing else escapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.rules.expressions import (
    MAX_CHARS,
    MAX_DEPTH,
    MAX_PREDICATES,
    ExpressionError,
    Junction,
    Not,
    Predicate,
    expression_compile,
    parse,
)

pytestmark = pytest.mark.unit


def test_and_binds_tighter_than_or_and_not_applies_to_the_next_term():
    tree = parse('id = "a" OR NOT id = "b" AND title = "c"')

    assert tree == Junction(
        "or",
        (
            Predicate("id", "=", ("a",)),
            Junction("and", (Not(Predicate("id", "=", ("b",))), Predicate("title", "=", ("c",)))),
        ),
    )


def test_keywords_are_case_insensitive_and_values_keep_their_types():
    tree = parse('attributes.in_stock = TRUE and attributes.price < 49.5 And attributes.size in (1, "xl")')

    assert tree == Junction(
        "and",
        (
            Predicate("attributes.in_stock", "=", (True,)),
            Predicate("attributes.price", "<", (49.5,)),
            Predicate("attributes.size", "in", (1, "xl")),
        ),
    )


def test_strings_take_escaped_quotes_and_backslashes():
    assert parse(r'title = "say \"hi\" \\ bye"') == Predicate("title", "=", ('say "hi" \\ bye',))


def test_dates_become_utc_instants():
    tree = parse('published_at >= "2026-01-31"')

    assert isinstance(tree, Predicate)
    assert tree.values[0].isoformat() == "2026-01-31T00:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "empty"),
        ("attributes.price <", 18, "expected a value"),
        ("price < 5", 0, "unknown field"),
        ('id = "a" title = "b"', 9, "expected AND, OR"),
        ('(id = "a"', 9, "expected ')'"),
        ("id = 5", 3, "compared with a string"),
        ('published_at > "yesterday"', 13, "not a date"),
        ("attributes.colour = null", 20, "IS NULL"),
        ('categories = "sale"', 11, "CONTAINS"),
        ('title CONTAINS "x"', 6, "CONTAINS applies"),
        ("attributes.a = 1; DROP TABLE x", 16, "unexpected character"),
        ("attributes.a NOT 1", 17, "expected IN"),
        ("attributes." + "k" * 65 + " = 1", 0, "unknown field"),
        ('id = "a" AND', 12, "expected a field"),
        ('"unterminated = 1', 0, "unexpected character"),
    ],
)
def test_a_fault_is_reported_at_its_position(text, position, fragment):
    with pytest.raises(ExpressionError) as raised:
        parse(text)

    assert raised.value.position == position
    assert fragment in raised.value.message


def test_size_is_bounded_in_characters_depth_and_comparisons():
    with pytest.raises(ExpressionError, match="at most 1000 characters"):
        parse('title = "' + "x" * MAX_CHARS + '"')
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse("NOT " * (MAX_DEPTH + 1) + 'id = "a"')
    with pytest.raises(ExpressionError, match="comparisons"):
        parse(" OR ".join(['id = "a"'] * (MAX_PREDICATES + 1)))
    assert parse("NOT " * (MAX_DEPTH - 1) + 'id = "a"')


def test_values_are_parameters_and_never_part_of_the_sql():
    compiled = expression_compile('attributes.x = "\'; DROP TABLE recsys_item; --" OR title = "%s"', prefix="p")

    assert "DROP" not in compiled.sql
    assert "%s" not in compiled.sql.replace("%(p", "")
    assert set(compiled.params) == {"p0", "p1", "p2"}
    assert compiled.params["p1"] == '"\'; DROP TABLE recsys_item; --"'


def test_not_equal_is_the_negation_of_equal():
    assert expression_compile('title != "a"', prefix="p").sql == "(NOT coalesce(i.title = %(p0)s::text, false))"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('abcdeiInNoOtTrRuUsSlL_.()," =<>!0123456789-\\x \t')), max_size=80))
def test_any_text_either_parses_or_raises_the_expression_error(text):
    try:
        compiled = expression_compile(text, prefix="p")
    except ExpressionError as error:
        assert 0 <= error.position <= len(text)
    else:
        assert compiled.sql.count("%(") == sum(compiled.sql.count(f"%({name})s") for name in compiled.params)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_unicode_never_raises_anything_else(text):
    try:
        parse(text)
    except ExpressionError:
        pass


def test_a_string_with_a_lone_surrogate_is_refused_where_it_stands() -> None:
    # found by the SQL property test: PostgreSQL's JSON refuses "\udae4" (no UTF-8 form)
    with pytest.raises(ExpressionError, match="lone surrogates") as refused:
        parse('attributes.colour = "es\udae4"')
    assert refused.value.position == 20  # the string's opening quote
