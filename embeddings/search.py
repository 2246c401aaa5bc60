"""Search: by meaning (the query encoded like item text), by words (PostgreSQL full-text), or both
fused by reciprocal rank."""

from __future__ import annotations

from django.db import connection

from embeddings.content import version_encoder
from embeddings.query_encoder import content_version_for_queries
from embeddings.serving import Answer, Recommendation, from_neighbours, model_ref
from embeddings.vectors.search import Filters, nearest_items
from recsys.errors import ModelNotReady

MODES = ("hybrid", "semantic", "keyword")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
FUSION_DEPTH = 50  # candidates per mode that the fusion ranks, at least

_KEYWORD = """
    SELECT i.id, i.external_id, ts_rank_cd(i.search_vector, q, 32) AS rank
    FROM recsys_item i, websearch_to_tsquery('english', %(q)s) q
    WHERE i.search_vector @@ q AND NOT i.is_hidden {category}
    ORDER BY rank DESC, i.external_id LIMIT %(limit)s
"""


def items_search(*, query: str, mode: str, limit: int, category: str | None = None) -> Answer:
    """Items matching ``query``; hybrid degrades to keyword while no content model is active."""
    content = content_version_for_queries()
    if mode == "keyword" or (mode == "hybrid" and content is None):
        return Answer(_keyword(query, limit, category), None, "keyword")
    if content is None:
        raise ModelNotReady("semantic search needs a content model, and none is active yet")
    if mode == "semantic":
        return Answer(_semantic(content, query, limit, category), model_ref(content), "semantic")
    depth = max(limit * 2, FUSION_DEPTH)
    return Answer(
        _fused([_semantic(content, query, depth, category), _keyword(query, depth, category)], limit),
        model_ref(content),
        "hybrid",
    )


def _semantic(content, query: str, limit: int, category: str | None) -> list[Recommendation]:  # type: ignore[no-untyped-def]
    vector = version_encoder(content, for_queries=True).encode([query])[0]
    if not vector.any():  # no known word (TF-IDF): nothing is near it
        return []
    return from_neighbours(nearest_items(content.item_table, vector, limit=limit, filters=Filters((), category)))


def _keyword(query: str, limit: int, category: str | None) -> list[Recommendation]:
    category_sql = "AND i.categories @> ARRAY[%(category)s]::varchar[]" if category else ""
    with connection.cursor() as cursor:
        cursor.execute(_KEYWORD.format(category=category_sql), {"q": query, "limit": limit, "category": category})
        return [Recommendation(external_id, round(float(rank), 6)) for _, external_id, rank in cursor.fetchall()]


def _fused(rankings: list[list[Recommendation]], limit: int) -> list[Recommendation]:
    """Reciprocal rank fusion: Σ 1 / (k + rank) over the rankings an item appears in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item.id] = scores.get(item.id, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [Recommendation(item_id, round(score, 6)) for item_id, score in best]
