"""Serving: personalised, similar-item, session and popular recommendations, with cold paths.

Every answer names the ``strategy`` that produced it and the model version it read, so clients
can tell a collaborative answer from a popularity fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from django.core.cache import cache
from django.db import connection

from embeddings.freshness import user_vector_fold_in
from embeddings.models import ActiveVersion, Kind, ModelVersion
from embeddings.vector_search import Filters, Neighbour, nearest_items, vectors_of
from recsys.errors import ItemNotFound, ValidationFailed
from recsys.models import Item, User

logger = logging.getLogger(__name__)
MAX_SEEN = 5_000  # a user's most recent items excluded from their recommendations
EXPLAIN_ITEMS = 3
POPULAR_WINDOW_DAYS = 7


@dataclass
class Recommendation:
    id: str
    score: float
    reason: dict[str, Any] | None = None


@dataclass
class Answer:
    items: list[Recommendation]
    model: dict[str, Any] | None
    strategy: str


def _active(kind: str = Kind.COLLABORATIVE) -> ModelVersion | None:
    pointer = (
        ActiveVersion.objects.select_related("version")
        .filter(kind=kind, version__has_tables=True)
        # The Gram matrix (d x d JSON) loads only when a fold-in needs it.
        .defer("version__item_gram", "version__progress", "version__metrics", "version__baseline_metrics")
        .first()
    )
    return pointer.version if pointer else None


def _model_ref(version: ModelVersion | None) -> dict[str, Any] | None:
    return {"kind": version.kind, "version": version.pk} if version else None


def _from_neighbours(neighbours: list[Neighbour]) -> list[Recommendation]:
    return [Recommendation(n.external_id, round(n.score, 6)) for n in neighbours]


# ---- popular -------------------------------------------------------------------------------

# Within the window each event counts exp(-age / window); the exponent is clamped because events
# decades old would underflow a double. The all-time fallback counts events undecayed.
_POPULAR = """
    SELECT i.id, i.external_id, sum(greatest(x.weight, 0) * {decay}) AS score
    FROM recsys_interaction x JOIN recsys_item i ON i.id = x.item_id
    WHERE NOT i.is_hidden {window} {category}
    GROUP BY i.id, i.external_id HAVING sum(greatest(x.weight, 0)) > 0
    ORDER BY score DESC, i.external_id LIMIT %(depth)s
"""
_DECAY = "exp(greatest(-extract(epoch FROM now() - x.timestamp) / %(tau)s, -700))"
_WINDOW = "AND x.timestamp >= now() - %(window)s * interval '1 day'"
POPULAR_DEPTH = 1000  # ranked items kept per (window, category); exclusions are applied after
POPULAR_CACHE_SECONDS = 60


def popular_items_list(
    *,
    limit: int,
    category: str | None = None,
    window_days: float = POPULAR_WINDOW_DAYS,
    exclude_ids: tuple[int, ...] = (),
) -> Answer:
    """Most interacted items (time-decayed within the window, all time when the window is too
    quiet), from a ranking cached for a minute; ``exclude_ids`` are skipped."""
    excluded = set(exclude_ids)
    ranked = _popular_ranking(window_days, category)
    items = [Recommendation(ext, round(score, 6)) for pk, ext, score in ranked if pk not in excluded][:limit]
    return Answer(items, None, "popular")


def _popular_ranking(window_days: float, category: str | None) -> list[tuple[int, str, float]]:
    key = f"popular:{window_days}:{category or ''}"
    try:
        cached = cache.get(key)
    except Exception:  # Redis away: compute every time rather than fail
        cached = None
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    params = {"tau": window_days * 86_400.0, "window": window_days, "category": category, "depth": POPULAR_DEPTH}
    category_sql = "AND i.categories @> ARRAY[%(category)s]::varchar[]" if category else ""
    ranked: list[tuple[int, str, float]] = []
    for decay, window in ((_DECAY, _WINDOW), ("1", "")):
        with connection.cursor() as cursor:
            cursor.execute(_POPULAR.format(decay=decay, window=window, category=category_sql), params)
            ranked = [(int(pk), ext, float(score)) for pk, ext, score in cursor.fetchall()]
        if len(ranked) >= POPULAR_DEPTH // 10:
            break
    try:
        cache.set(key, ranked, POPULAR_CACHE_SECONDS)
    except Exception:
        logger.warning("could not cache the popular ranking", exc_info=True)
    return ranked


# ---- personalised --------------------------------------------------------------------------


def _user_history(user_id: int) -> tuple[list[int], npt.NDArray[np.float32]]:
    """The user's items (most recent first, capped) and summed weights per item."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT item_id, sum(weight) FROM recsys_interaction WHERE user_id = %s "
            "GROUP BY item_id ORDER BY max(timestamp) DESC LIMIT %s",
            [user_id, MAX_SEEN],
        )
        rows = cursor.fetchall()
    return [int(r[0]) for r in rows], np.array([r[1] for r in rows], dtype=np.float32)


def user_recommendations_list(
    *,
    user_external_id: str,
    limit: int,
    category: str | None = None,
    exclude: tuple[str, ...] = (),
    include_seen: bool = False,
    explain: bool = False,
    diversity: float = 0.0,
) -> Answer:
    """Collaborative when the user has a vector (stored, or folded in from their history);
    popularity for unknown and cold users."""
    user = User.objects.filter(external_id=user_external_id).only("id").first()
    history, weights = _user_history(user.pk) if user else ([], np.zeros(0, np.float32))
    excluded = set(_item_ids(exclude)) | (set() if include_seen else set(history))
    version = _active()
    vector, strategy = _user_vector(version, user, history, weights) if version else (None, "popular")
    if version is None or vector is None:
        return popular_items_list(limit=limit, category=category, exclude_ids=tuple(excluded))
    wanted = min(limit * 4, 200) if diversity > 0 else limit
    neighbours = nearest_items(version.item_table, vector, limit=wanted, filters=Filters(tuple(excluded), category))
    if diversity > 0:
        neighbours = mmr_rerank(
            neighbours,
            vectors_of(version.item_table, "item_id", [n.item_id for n in neighbours]),
            limit=limit,
            diversity=diversity,
        )
    items = _from_neighbours(neighbours)
    if explain:
        _explain(items, neighbours, version, history, weights)
    return Answer(items, _model_ref(version), strategy)


def _user_vector(
    version: ModelVersion, user: User | None, history: list[int], weights: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32] | None, str]:
    if user is None:
        return None, "popular"
    stored = vectors_of(version.user_table, "user_id", [user.pk])
    if user.pk in stored:
        return stored[user.pk], "collaborative"
    vector = user_vector_fold_in(version, history, weights)
    return (vector, "collaborative_fold_in") if vector is not None else (None, "popular")


def _explain(
    items: list[Recommendation],
    neighbours: list[Neighbour],
    version: ModelVersion,
    history: list[int],
    weights: npt.NDArray[np.float32],
) -> None:
    """Reason per item: the user's past items whose vectors point the same way, weighted by confidence."""
    # Each past item's share of the score: its weight times (query side of it) · (candidate item);
    # for EASE that is exactly its term of the sum, for the factorisation models an approximation.
    past = _query_vectors(version, history)
    if not past:
        return
    past_ids = [i for i in history if i in past]
    past_matrix = np.stack([past[i] for i in past_ids])
    past_weights = np.array([weights[history.index(i)] for i in past_ids], dtype=np.float32)
    names = dict(Item.objects.filter(pk__in=past_ids).values_list("pk", "external_id"))
    candidates = vectors_of(version.item_table, "item_id", [n.item_id for n in neighbours])
    for item, neighbour in zip(items, neighbours, strict=True):
        contributions = (past_matrix @ candidates[neighbour.item_id]) * np.maximum(past_weights, 0)
        top = np.argsort(-contributions)[:EXPLAIN_ITEMS]
        item.reason = {
            "because": [
                {"id": names[past_ids[j]], "contribution": round(float(contributions[j]), 6)}
                for j in top
                if contributions[j] > 0
            ]
        }


def mmr_rerank(
    neighbours: list[Neighbour], vectors: dict[int, npt.NDArray[np.float32]], *, limit: int, diversity: float
) -> list[Neighbour]:
    """Maximal marginal relevance: trade score for dissimilarity to items already chosen."""
    if not neighbours:
        return []
    scores = np.array([n.score for n in neighbours])
    relevance = (scores - scores.min()) / (np.ptp(scores) or 1.0)
    unit = np.stack([vectors[n.item_id] / (np.linalg.norm(vectors[n.item_id]) or 1.0) for n in neighbours])
    chosen: list[int] = []
    remaining = list(range(len(neighbours)))
    while remaining and len(chosen) < limit:
        redundancy = (unit[remaining] @ unit[chosen].T).max(axis=1) if chosen else np.zeros(len(remaining))
        value = (1 - diversity) * relevance[remaining] - diversity * redundancy
        chosen.append(remaining.pop(int(np.argmax(value))))
    return [neighbours[i] for i in chosen]


# ---- item to item and session ------------------------------------------------------------------


def _item_ids(external_ids: tuple[str, ...] | list[str]) -> list[int]:
    return list(Item.objects.filter(external_id__in=list(external_ids)).values_list("pk", flat=True))


def _query_vectors(version: ModelVersion, item_ids: list[int]) -> dict[int, npt.NDArray[np.float32]]:
    """Vectors that stand for items in a query: EASE's input side (what a user who chose the item
    would be), the item embedding itself for the factorisation models."""
    column = "fold_in" if version.algorithm == "ease" else "embedding"
    return vectors_of(version.item_table, "item_id", item_ids, column=column)


def item_similar_list(
    *, item_external_id: str, limit: int, space: str = Kind.COLLABORATIVE, category: str | None = None
) -> Answer:
    """Nearest items to one item; an item without a vector gets popular items of its categories."""
    item = Item.objects.filter(external_id=item_external_id).only("id", "categories").first()
    if item is None:
        raise ItemNotFound(f"item {item_external_id!r} does not exist")
    if space != Kind.COLLABORATIVE:
        raise ValidationFailed(
            f"space {space!r} is not available yet; use collaborative", details={"space": ["invalid"]}
        )
    version = _active()
    vector = _query_vectors(version, [item.pk]).get(item.pk) if version else None
    if version is None or vector is None:
        fallback_category = category or (item.categories[0] if item.categories else None)
        answer = popular_items_list(limit=limit, category=fallback_category, exclude_ids=(item.pk,))
        answer.strategy = "popular_in_category" if fallback_category else "popular"
        return answer
    neighbours = nearest_items(version.item_table, vector, limit=limit, filters=Filters((item.pk,), category))
    return Answer(_from_neighbours(neighbours), _model_ref(version), "collaborative")


def session_recommendations_list(
    *, positives: list[str], negatives: list[str], limit: int, category: str | None = None
) -> Answer:
    """Items like the positives and unlike the negatives: mean(positive vectors) - mean(negative vectors)."""
    positive_ids, negative_ids = _item_ids(positives), _item_ids(negatives)
    given = tuple(positive_ids + negative_ids)
    version = _active()
    found = _query_vectors(version, list(given)) if version else {}
    liked = [found[i] for i in positive_ids if i in found]
    if version is None or not liked:
        return popular_items_list(limit=limit, category=category, exclude_ids=given)
    query = np.mean(liked, axis=0)
    disliked = [found[i] for i in negative_ids if i in found]
    if disliked:
        query = query - np.mean(disliked, axis=0)
    neighbours = nearest_items(
        version.item_table, query.astype(np.float32), limit=limit, filters=Filters(given, category)
    )
    return Answer(_from_neighbours(neighbours), _model_ref(version), "collaborative_session")
