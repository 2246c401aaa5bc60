"""Keyword queries are bounded before any SQL runs: words, operators, and at least one word to find."""

from __future__ import annotations

import pytest

from embeddings.search import keyword_query_parse
from recsys.errors import ValidationFailed

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


@pytest.fixture(autouse=True)
def bounds(settings):
    settings.RECSYS_SEARCH_MAX_TERMS = 6
    settings.RECSYS_SEARCH_MAX_OPERATORS = 3


def test_a_plain_query_passes_unchanged():
    parsed = keyword_query_parse(query='red "running shoes" -leather')

    assert parsed.text == 'red "running shoes" -leather'
    assert (parsed.terms, parsed.operators) == (4, 2)


def test_repeated_negations_collapse_into_one():
    parsed = keyword_query_parse(query="shoes " + " ".join(["-red"] * 100))

    assert parsed.text == "shoes -red"
    assert (parsed.terms, parsed.operators) == (2, 1)


def test_repeats_are_kept_where_or_gives_them_meaning():
    parsed = keyword_query_parse(query="red shoes or red")

    assert parsed.text == "red shoes or red"
    assert parsed.operators == 1


def test_a_query_of_negations_only_is_refused():
    with pytest.raises(ValidationFailed, match="at least one word to look for"):
        keyword_query_parse(query="-red -blue")


def test_the_attack_of_the_issue_is_refused_without_a_positive_word():
    with pytest.raises(ValidationFailed, match="at least one word"):
        keyword_query_parse(query=" ".join(["-red"] * 100))


def test_too_many_distinct_words_are_refused():
    with pytest.raises(ValidationFailed, match="7 distinct words; a keyword search takes at most 6") as error:
        keyword_query_parse(query="a b c d e f g")

    assert error.value.details == {"q": ["at most 6 words"]}


def test_too_many_operators_are_refused():
    with pytest.raises(ValidationFailed, match="4 operators"):
        keyword_query_parse(query="shoes -a -b or c -d")


def test_a_negated_phrase_counts_as_two_operators():
    parsed = keyword_query_parse(query='shoes -"red leather"')

    assert (parsed.terms, parsed.operators) == (3, 2)


def test_punctuation_alone_is_not_a_word():
    parsed = keyword_query_parse(query="shoes - !! ,")

    assert parsed.text == "shoes"


def test_words_joined_by_underscores_count_as_the_words_postgresql_finds():
    # PostgreSQL's parser splits shoe_boot_sock into three words (a phrase of them); Python's \w did not
    with pytest.raises(ValidationFailed, match="7 distinct words"):
        keyword_query_parse(query="a_b_c_d_e_f_g")

    parsed = keyword_query_parse(query="red_shoe")
    assert parsed.text == '"red_shoe"' and (parsed.terms, parsed.operators) == (2, 1)
