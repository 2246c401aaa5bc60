"""Similar items for an item with no vector in the asked space yet: words, then popularity, then recency."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from embeddings.recommendations import Answer, Recommendation, popular_candidates
from recsys.replicas import read_connection
from recsys.rules.ruleset import NO_RULES, RuleSet, item_conditions

# The item's own lexemes that make its keyword query: title words first, then its most repeated
# text words. Sixteen keep the OR query cheap on the GIN index and still find shared topics.
QUERY_TERMS = 16

# The item's lexemes (already stemmed by the 'english' configuration) are quoted into a tsquery
# literally, so stemming is not applied twice; quotes and backslashes are doubled as tsquery
# input requires. As in keyword search (embeddings/search.py), at most RECSYS_SEARCH_MAX_RANKED
# matches are ranked: sixteen words OR-ed, some of them common, matched 49,346 of 100,000 generated
# items, and ranking them all took 2.2 s, past the serving limit, so such an item's similar items
# were a 503 on every request.
_KEYWORD = """
    WITH terms AS (
        SELECT t.lexeme FROM recsys_item source, unnest(source.search_vector) t
        WHERE source.id = %(item)s
        ORDER BY ('A' = ANY(t.weights)) DESC, cardinality(t.positions) DESC, t.lexeme
        LIMIT %(terms)s
    ), query AS (
        SELECT string_agg('''' || replace(replace(lexeme, '\\', '\\\\'), '''', '''''') || '''', ' | ')::tsquery AS q
        FROM terms
    )
    SELECT m.external_id, ts_rank_cd(m.search_vector, query.q, 32) AS rank, m.until
    FROM (
        SELECT i.external_id, i.search_vector, extract(epoch FROM i.available_until) AS until
        FROM recsys_item i, query
        WHERE i.search_vector @@ query.q AND i.id <> %(item)s AND NOT i.is_hidden {category} {conditions}
        LIMIT %(ranked)s
    ) m, query
    ORDER BY rank DESC, m.external_id LIMIT %(limit)s
"""
# Newest first, items sharing a category with this one before the rest; the score is 1 / rank.
_RECENT = """
    SELECT i.external_id, extract(epoch FROM i.available_until) FROM recsys_item i
    WHERE i.id <> %(item)s AND NOT i.is_hidden {category} {conditions}
    ORDER BY i.categories && %(categories)s::varchar[] DESC, coalesce(i.published_at, i.created_at) DESC,
             i.external_id
    LIMIT %(limit)s
"""
_CATEGORY = "AND i.categories @> ARRAY[%(category)s]::varchar[]"


def item_similar_fallback(
    *, item_id: int, categories: list[str], limit: int, category: str | None, rules: RuleSet = NO_RULES
) -> Answer:
    """The first non-empty of: items sharing the item's words (``keyword``), popular items of
    ``category`` or the item's first category (``popular_in_category``), popular items
    (``popular``, only without a ``category`` filter), the newest items (``recent``). Every step
    honours ``category``, so the answer is empty only when no other visible item matches."""
    params: dict[str, Any] = {
        "item": item_id,
        "limit": limit,
        "category": category,
        "categories": categories,
        "terms": QUERY_TERMS,
        "ranked": settings.RECSYS_SEARCH_MAX_RANKED,
    }
    conditions, condition_params = item_conditions(rules)
    params.update(condition_params)
    keyword = _rows(_KEYWORD, params, conditions)
    if keyword:
        items = [Recommendation(str(ext), round(float(rank), 6), until=_epoch(until)) for ext, rank, until in keyword]
        return Answer(items, None, "keyword")
    scope = category or (categories[0] if categories else None)
    popular = popular_candidates(limit=limit, category=scope, exclude_ids=(item_id,), rules=rules)
    popular.strategy = "popular_in_category" if scope else "popular"
    if popular.items:
        return popular
    if scope and not category:
        anywhere = popular_candidates(limit=limit, exclude_ids=(item_id,), rules=rules)
        if anywhere.items:
            return anywhere
    recent = _rows(_RECENT, params, conditions)
    if recent:
        items = [
            Recommendation(str(ext), round(1 / rank, 6), until=_epoch(until))
            for rank, (ext, until) in enumerate(recent, 1)
        ]
        return Answer(items, None, "recent")
    return popular  # nothing else is visible (and in the category): an empty answer that says so


def _epoch(until: Any) -> float | None:
    """The end of an item's availability window as the answer carries it (an answer cached with an
    item whose window has closed is computed again: ``embeddings.serving.answer_through_cache``)."""
    return None if until is None else float(until)


def _rows(statement: str, params: dict[str, Any], conditions: str) -> list[tuple[Any, ...]]:
    with read_connection().cursor() as cursor:
        category = _CATEGORY if params["category"] else ""
        cursor.execute(statement.format(category=category, conditions=conditions), params)
        return cursor.fetchall()
