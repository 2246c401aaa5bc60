"""Serving: personalised, similar-item, session and popular recommendations, with cold paths.

Every answer names the ``strategy`` that produced it and the model version it read, so clients
can tell a collaborative answer from a popularity fallback.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from django.conf import settings

from embeddings.fold_in import user_vector_fold_in
from embeddings.interactions import weights_transform
from embeddings.models import Kind, ModelVersion
from embeddings.popularity import popular_ranking
from embeddings.ranking.serving import RankingRequest, Stage, positive_scores, ranked_list, ranking_wanted
from embeddings.rules import NO_RULES, RuleSet, answer_rules_apply, rules_resolve
from embeddings.serving import (
    Answer,
    Recommendation,
    active,
    answer_through_cache,
    from_neighbours,
    item_ids,
    model_ref,
    query_column,
    version_nearest_items,
)
from embeddings.vectors.rows import user_state_row, vectors_of
from embeddings.vectors.search import Filters, Neighbour, user_nearest_items
from recsys.models import Item
from recsys.replicas import replica_reads

logger = logging.getLogger(__name__)
MAX_SEEN = 5_000  # a user's most recent items excluded from their recommendations
EXPLAIN_ITEMS = 3
USER_SOURCES = ("auto", "content", "popular")


# ---- popular -------------------------------------------------------------------------------


@replica_reads()
def popular_items_list(
    *,
    limit: int,
    category: str | None = None,
    window_days: float | None = None,
    exclude_ids: tuple[int, ...] = (),
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
    apply_scenario_rules: bool = True,
) -> Answer:
    """Most interacted items (time-decayed within the window, all time when the window is too
    quiet); ``exclude_ids`` are skipped; ``rules`` and the scenario's filter, boost and pin them."""
    rules = rules_resolve(rules=rules, scenario=scenario, apply_scenario_rules=apply_scenario_rules)
    answer = popular_candidates(
        limit=rules.depth(limit), category=category, window_days=window_days, exclude_ids=exclude_ids, rules=rules
    )
    return answer_rules_apply(answer, rules, limit=limit, exclude_ids=exclude_ids, category=category)


def popular_candidates(
    *,
    limit: int,
    category: str | None = None,
    window_days: float | None = None,
    exclude_ids: tuple[int, ...] = (),
    rules: RuleSet = NO_RULES,
) -> Answer:
    """The popular ranking under ``rules``' filters, not re-ordered (the serving paths' fallback)."""
    excluded = set(exclude_ids)
    ranked = popular_ranking(
        window_days=window_days or settings.RECSYS_POPULAR_WINDOW_DAYS,
        category=category,
        rules=rules,
        wanted=limit + len(excluded),
    )
    items = [Recommendation(r[1], round(r[2], 6), until=r[4]) for r in ranked if r[0] not in excluded][:limit]
    return Answer(items, None, "popular")


# ---- personalised --------------------------------------------------------------------------


@dataclass
class UserState:
    """What serving needs to know about a user, read in one round trip."""

    id: int
    vector: npt.NDArray[np.float32] | None  # stored in the active version
    history: list[int]  # item ids, most recent first, capped at MAX_SEEN
    weights: npt.NDArray[np.float32]  # summed event weight per history item
    seen_at: npt.NDArray[np.float64]  # epoch seconds of the latest event per history item


def _user_state(external_id: str, version: ModelVersion | None) -> UserState | None:
    row = user_state_row(
        user_external_id=external_id, user_table=version.user_table if version else None, seen=MAX_SEEN
    )
    if row is None:
        return None
    user_id, stored, items, weights, seen_at = row
    return UserState(
        id=user_id,
        vector=stored,
        history=[int(i) for i in items],
        weights=np.asarray(weights, dtype=np.float32),
        seen_at=np.asarray(seen_at, dtype=np.float64),
    )


@replica_reads(user_argument="user_external_id")
def user_recommendations_list(
    *,
    user_external_id: str,
    limit: int,
    category: str | None = None,
    exclude: tuple[str, ...] = (),
    include_seen: bool = False,
    explain: bool = False,
    diversity: float = 0.0,
    version: ModelVersion | None = None,
    source: str = "auto",
    ranking: bool | None = None,
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
    apply_scenario_rules: bool = True,
) -> Answer:
    """Collaborative when the user has a vector (stored, or folded in from their history), else a
    content profile of what they interacted with, else popularity. Hot answers come from the cache.

    An experiment's variant narrows this: ``version`` serves that collaborative version instead of
    the active one; ``source`` "content" starts at the content profile, "popular" serves popularity
    (without the user's seen items), "auto" is the chain above. ``ranking``: the learned ranking
    stage over several candidate sources (strategy "ranked") — None uses it when the version's
    validation says it beats the best single source, True whenever the version has one, False
    never. The user's hidden items are never recommended; ``rules`` apply, and the scenario's saved
    rules unless ``apply_scenario_rules`` is false.
    """
    if source not in USER_SOURCES:
        raise ValueError(f"source must be one of {USER_SOURCES}")
    rules = rules_resolve(
        rules=replace(rules, hidden_for=user_external_id), scenario=scenario, apply_scenario_rules=apply_scenario_rules
    )
    key = [limit, category, sorted(exclude), include_seen, explain, diversity, ranking]
    if version is not None or source != "auto":
        key += [getattr(version, "pk", None), source]
    request = _UserRequest(
        user_external_id,
        rules.depth(limit),
        category,
        exclude,
        include_seen,
        explain,
        diversity,
        ranking,
        rules,
        version,
        source,
    )

    def compute() -> Answer:
        found = _user_recommendations(request)
        seen_by = None if include_seen else user_external_id
        return answer_rules_apply(found, rules, limit=limit, exclude=exclude, category=category, seen_by=seen_by)

    return answer_through_cache(f"user:{user_external_id}", json.dumps(key) + rules.key(), compute)


@dataclass(frozen=True)
class _UserRequest:
    user_external_id: str
    limit: int  # the candidates wanted before the rules cut the answer to the client's limit
    category: str | None
    exclude: tuple[str, ...]
    include_seen: bool
    explain: bool
    diversity: float
    ranking: bool | None
    rules: RuleSet
    version: ModelVersion | None
    source: str


def _user_recommendations(request: _UserRequest) -> Answer:
    user_external_id, limit, category = request.user_external_id, request.limit, request.category
    include_seen, explain, diversity, rules = request.include_seen, request.explain, request.diversity, request.rules
    collaborative = (request.version or active()) if request.source == "auto" else None
    exclude_ids = item_ids(request.exclude)
    if request.source == "popular":
        user = _user_state(user_external_id, None)
        seen = set() if include_seen or user is None else set(user.history)
        unwanted = tuple(set(exclude_ids) | seen)
        return popular_candidates(limit=limit, category=category, exclude_ids=unwanted, rules=rules)
    stage = ranking_wanted(collaborative, request.ranking) if collaborative is not None else None
    if collaborative is not None and stage is None and not explain and diversity == 0:
        # The common case (a user with a stored vector) in one statement; others read their state.
        found = user_nearest_items(
            user_table=collaborative.user_table,
            item_table=collaborative.item_table,
            user_external_id=user_external_id,
            limit=limit,
            filters=Filters(tuple(exclude_ids), category, rules),
            seen=0 if include_seen else MAX_SEEN,
            ef_search=collaborative.served_ef_search,
        )
        if found is not None:
            return Answer(from_neighbours(found), model_ref(collaborative), "collaborative")
    user = _user_state(user_external_id, collaborative)
    history = user.history if user else []
    excluded = set(exclude_ids) | (set() if include_seen else set(history))
    version, vector, strategy = _user_query(collaborative, user)
    if version is None or vector is None or user is None:
        return popular_candidates(limit=limit, category=category, exclude_ids=tuple(excluded), rules=rules)
    wanted = min(limit * 4, 200) if diversity > 0 else limit
    filters = Filters(tuple(excluded), category, rules)
    if stage is not None and version is collaborative:
        return _ranked(stage, collaborative, vector, user, excluded, request, wanted)
    neighbours = version_nearest_items(version, vector, limit=wanted, filters=filters)
    if diversity > 0:
        neighbours = mmr_rerank(
            neighbours,
            vectors_of(version.item_table, "item_id", [n.item_id for n in neighbours]),
            limit=limit,
            diversity=diversity,
        )
    items = from_neighbours(neighbours)
    if explain:
        _explain(items, neighbours, version, user.history, user.weights)
    return Answer(items, model_ref(version), strategy)


def _ranked(
    stage: Stage,
    version: ModelVersion,
    vector: npt.NDArray[np.float32],
    user: UserState,
    excluded: set[int],
    request: _UserRequest,
    wanted: int,
) -> Answer:
    """The ranking stage's answer (``explain`` adds each item's top feature contributions)."""
    content = active(Kind.CONTENT)
    if content is not None and not stage.reads_content(content.pk):
        content = None  # another space than the ranker learned its content features in: as without a profile
    profile = content_profile(content, user) if content is not None else None
    ranked = ranked_list(
        stage,
        RankingRequest(
            version=version,
            vector=vector,
            content=(content, profile) if content is not None and profile is not None else None,
            history=user.history,
            seen_at=user.seen_at,
            excluded=frozenset(excluded),
            category=request.category,
            limit=wanted,
            rules=request.rules,
        ),
        explain=request.explain,
    )
    neighbours = ranked.neighbours
    if request.diversity > 0:
        vectors = vectors_of(version.item_table, "item_id", [n.item_id for n in neighbours])
        neighbours = mmr_rerank(
            [n for n in neighbours if n.item_id in vectors], vectors, limit=request.limit, diversity=request.diversity
        )
    target = request.limit if request.diversity > 0 else wanted
    added: list[Neighbour] = []
    if len(neighbours) < target:
        # The stage's sources (popular, trending, co-occurring...) ignore a filter until their candidates'
        # rows are read, so a selective one can leave few of them: the rest come from the model's own
        # filtered search, after the ranked (and re-ranked) ones, on the ranked scores' scale.
        have = excluded | {n.item_id for n in neighbours}
        added = version_nearest_items(
            version,
            vector,
            limit=target - len(neighbours),
            filters=Filters(tuple(have), request.category, request.rules),
        )
    neighbours = positive_scores(neighbours, added)
    items = from_neighbours(neighbours)
    if request.explain and ranked.features is not None:
        _explain(items, neighbours, version, user.history, user.weights)
        by_id = {n.item_id: f for n, f in zip(ranked.neighbours, ranked.features, strict=True)}
        for item, neighbour in zip(items, neighbours, strict=True):
            if neighbour.item_id in by_id:  # not one the filtered search added
                item.reason = {**(item.reason or {}), "features": by_id[neighbour.item_id]}
    return Answer(items, model_ref(version), "ranked")


def _user_query(
    collaborative: ModelVersion | None, user: UserState | None
) -> tuple[ModelVersion | None, npt.NDArray[np.float32] | None, str]:
    """The version to search and the user's query vector in it: collaborative (stored or folded
    in), else the content profile, else none (popular)."""
    if user is None or not (user.history or user.vector is not None):
        return None, None, "popular"
    if collaborative is not None:
        vector, strategy = _user_vector(collaborative, user)
        if vector is not None:
            return collaborative, vector, strategy
    content = active(Kind.CONTENT)
    if content is not None:
        profile = content_profile(content, user)
        if profile is not None:
            return content, profile, "content_profile"
    return None, None, "popular"


def content_profile(version: ModelVersion, user: UserState) -> npt.NDArray[np.float32] | None:
    """Recency-weighted mean of the content vectors of the user's items, dislikes subtracted
    (their weights are negative); None when none of their items with a positive weight has a
    content vector (dislikes alone would point at what is least like them, not at a taste)."""
    found = vectors_of(version.item_table, "item_id", user.history)
    known = [k for k, item in enumerate(user.history) if item in found and user.weights[k] != 0]
    if not any(user.weights[k] > 0 for k in known):
        return None
    half_life = settings.RECSYS_CONTENT_PROFILE_HALF_LIFE_DAYS * 86_400.0
    # Ages from the user's latest item, not from now: the profile is normalised, so the common factor
    # cancels, and a history that ended years ago (imported data) no longer decays to nothing.
    seen_at = user.seen_at[known]
    age = np.maximum(seen_at.max() - seen_at, 0.0)
    weights = user.weights[known] * np.exp2(-age / half_life)
    profile = (weights[:, None] * np.stack([found[user.history[k]] for k in known])).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    return (profile / norm).astype(np.float32) if norm > 1e-9 else None


def _user_vector(version: ModelVersion, user: UserState) -> tuple[npt.NDArray[np.float32] | None, str]:
    if user.vector is not None:
        return user.vector, "collaborative"
    vector = user_vector_fold_in(version, user.history, user.weights)
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
    # As training and the fold-in read them (LearnerParams.weighting).
    scale = float(version.params.get("weight_scale") or 1.0)
    past_weights = weights_transform(past_weights, str(version.params.get("weighting", "raw")), scale)
    names = dict(Item.objects.filter(pk__in=past_ids).values_list("pk", "external_id"))
    candidates = vectors_of(version.item_table, "item_id", [n.item_id for n in neighbours])
    for item, neighbour in zip(items, neighbours, strict=True):
        if neighbour.item_id not in candidates:  # a ranked candidate the model has no vector for
            item.reason = {"because": []}
            continue
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


def _query_vectors(version: ModelVersion, item_ids: list[int]) -> dict[int, npt.NDArray[np.float32]]:
    return vectors_of(version.item_table, "item_id", item_ids, column=query_column(version))


@replica_reads()
def session_recommendations_list(
    *,
    positives: list[str],
    negatives: list[str],
    limit: int,
    category: str | None = None,
    rules: RuleSet = NO_RULES,
    scenario: str | None = None,
    apply_scenario_rules: bool = True,
) -> Answer:
    """Items like the positives and unlike the negatives: mean(positive vectors) - mean(negative
    vectors), in the collaborative space, else the content space (items new to the model)."""
    rules = rules_resolve(rules=rules, scenario=scenario, apply_scenario_rules=apply_scenario_rules)
    positive_ids, negative_ids = item_ids(positives), item_ids(negatives)
    answer = _session(positive_ids, negative_ids, rules.depth(limit), category, rules)
    return answer_rules_apply(answer, rules, limit=limit, exclude=(*positives, *negatives), category=category)


def _session(
    positive_ids: list[int], negative_ids: list[int], limit: int, category: str | None, rules: RuleSet
) -> Answer:
    given = tuple(positive_ids + negative_ids)
    for kind, strategy in ((Kind.COLLABORATIVE, "collaborative_session"), (Kind.CONTENT, "content_session")):
        version = active(kind)
        query = _session_query(version, positive_ids, negative_ids) if version else None
        if version is not None and query is not None:
            neighbours = version_nearest_items(version, query, limit=limit, filters=Filters(given, category, rules))
            return Answer(from_neighbours(neighbours), model_ref(version), strategy)
    return popular_candidates(limit=limit, category=category, exclude_ids=given, rules=rules)


def _session_query(
    version: ModelVersion, positive_ids: list[int], negative_ids: list[int]
) -> npt.NDArray[np.float32] | None:
    found = _query_vectors(version, positive_ids + negative_ids)
    liked = [found[i] for i in positive_ids if i in found]
    if not liked:
        return None
    query = np.mean(liked, axis=0)
    disliked = [found[i] for i in negative_ids if i in found]
    if disliked:
        query = query - np.mean(disliked, axis=0)
    return query.astype(np.float32)
