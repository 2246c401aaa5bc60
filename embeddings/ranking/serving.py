"""The ranking stage at request time: candidates from every source, features, one LightGBM predict.

Round trips: the collaborative ANN, the content ANN (when the user has a content profile), the
favourite categories' newest items, and one read of every candidate's facts and vectors; popular,
trending and co-occurring items come from the version's per-item state, loaded once per process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings

from embeddings.models import ModelVersion, VersionArtifacts
from embeddings.ranking.features import CandidateFacts, category_affinity, features_build, numeric_attributes
from embeddings.ranking.offline import DAY, RankingState
from embeddings.ranking.ranker import Ranker, ranker_load
from embeddings.ranking.sources import (
    FAVOURITE_CATEGORIES,
    RECENT_ITEMS,
    Candidates,
    candidates_merge,
    cooccurrence_scores,
)
from embeddings.vectors.rows import candidate_rows, category_recent_rows
from embeddings.vectors.search import Filters, Neighbour, nearest_items
from recsys.rules.ruleset import NO_RULES, RuleSet, item_conditions

EXPLAIN_FEATURES = 3


@dataclass(frozen=True)
class Stage:
    """A version's ranker, its per-item state and whether validation says to use it by default."""

    ranker: Ranker
    state: RankingState
    wins: bool
    depth: int
    attributes: tuple[str, ...]


_lock = threading.Lock()
_stages: dict[int, Stage | None] = {}


def ranking_stage(version: ModelVersion) -> Stage | None:
    """The version's stage, read once per process (None when its run trained none)."""
    with _lock:
        if version.pk in _stages:
            return _stages[version.pk]
    row = VersionArtifacts.objects.filter(version_id=version.pk).exclude(ranker="").first()
    stage = None
    if row is not None and row.ranking_state:
        names = list(row.ranking.get("features", []))
        attributes = tuple(n.removeprefix("attribute_") for n in names if n.startswith("attribute_"))
        stage = Stage(
            ranker_load(row.ranker, names),
            RankingState.from_bytes(bytes(row.ranking_state)),
            row.ranking_used,
            int(row.ranking.get("depth", settings.RECSYS_RANKING_DEPTH)),
            attributes,
        )
    with _lock:
        _stages[version.pk] = stage
    return stage


def ranking_wanted(version: ModelVersion, ranking: bool | None) -> Stage | None:
    """The stage to serve with: ``ranking`` None = when it beat the best source on validation,
    True = whenever the version has one, False = never."""
    if ranking is False:
        return None
    stage = ranking_stage(version)
    if stage is None or (ranking is None and not stage.wins):
        return None
    return stage


@dataclass
class Ranked:
    """The top candidates in ranked order, with their scores and (``explain``) top features."""

    neighbours: list[Neighbour]
    features: list[list[dict[str, float | str]]] | None


@dataclass(frozen=True)
class RankingRequest:
    """One user's request: their vector in the collaborative version, their content profile (None
    without one), their items most recent first with latest epoch seconds, and the filters."""

    version: ModelVersion
    vector: npt.NDArray[np.float32]
    content: tuple[ModelVersion, npt.NDArray[np.float32]] | None
    history: list[int]
    seen_at: npt.NDArray[np.float64]
    excluded: frozenset[int]
    category: str | None
    limit: int
    rules: RuleSet = NO_RULES  # availability, the filter and the user's hidden items, checked per candidate


def ranked_list(stage: Stage, request: RankingRequest, *, explain: bool = False) -> Ranked:
    """Retrieve from every source, build features, rank with one predict; the best ``limit``."""
    found, ids_by_source = _retrieve(stage, request)
    candidates = candidates_merge(found)
    rows = {
        r[0]: r
        for r in candidate_rows(
            ids=candidates.items.tolist(),
            item_table=request.version.item_table,
            content_table=request.content[0].item_table if request.content else None,
            category=request.category,
            attributes=bool(stage.attributes),
            conditions=item_conditions(request.rules),
        )
    }
    keep = np.array([int(i) in rows for i in candidates.items], dtype=bool)
    candidates = Candidates(candidates.items[keep], candidates.scores[keep], candidates.ranks[keep])
    if not len(candidates):
        return Ranked([], [] if explain else None)
    features = _features(stage, request, candidates, [rows[int(i)] for i in candidates.items], ids_by_source)
    scores = stage.ranker.predict(features)
    top = np.argsort(-scores, kind="stable")[: request.limit]
    neighbours = [Neighbour(int(candidates.items[k]), rows[int(candidates.items[k])][1], float(scores[k])) for k in top]
    return Ranked(neighbours, _contributions(stage, features[top]) if explain else None)


def _retrieve(
    stage: Stage, request: RankingRequest
) -> tuple[dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]], dict[str, float]]:
    """Each source's (item ids, scores); and the user's category shares (for the features)."""
    depth, excluded = stage.depth, request.excluded
    filters = Filters(tuple(excluded), request.category)
    found = {
        "collaborative": _from_neighbours(
            nearest_items(
                request.version.item_table,
                request.vector,
                vector_type=request.version.vector_type,
                limit=depth,
                filters=filters,
            )
        )
    }
    if request.content is not None:
        content, profile = request.content
        found["content"] = _from_neighbours(
            nearest_items(content.item_table, profile, vector_type=content.vector_type, limit=depth, filters=filters)
        )
    state = stage.state
    recent = np.asarray(request.history[:RECENT_ITEMS], np.int64)
    rows = np.searchsorted(state.item_ids, recent)
    known = (rows < len(state.item_ids)) & (state.item_ids[np.minimum(rows, len(state.item_ids) - 1)] == recent)
    co_rows, co_scores = cooccurrence_scores(state.neighbours, rows[known])
    found["cooccurrence"] = _state_items(state, co_rows, co_scores, excluded, depth)
    found["popular"] = _state_items(state, state.popular_order, state.popularity[state.popular_order], excluded, depth)
    found["trending"] = _state_items(state, state.recent_order, state.recent[state.recent_order], excluded, depth)
    counts, newest = category_recent_rows(
        recent=recent.tolist(), exclude=sorted(excluded), favourites=FAVOURITE_CATEGORIES, depth=depth
    )
    picked: dict[int, float] = {}
    for _, item, age in newest:
        picked.setdefault(item, 1.0 / (1.0 + max(age, 0.0)))
    found["category_recent"] = (
        np.fromiter(picked, np.int64, len(picked)),
        np.fromiter(picked.values(), np.float32, len(picked)),
    )
    total = max(len(recent), 1)
    return found, {c: n / total for c, n in counts.items()}


def _from_neighbours(neighbours: list[Neighbour]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    return (
        np.array([n.item_id for n in neighbours], np.int64),
        np.array([n.score for n in neighbours], np.float32),
    )


def _state_items(
    state: RankingState,
    rows: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    excluded: frozenset[int],
    depth: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    ids = state.item_ids[rows]
    keep = np.fromiter((int(i) not in excluded for i in ids), bool, len(ids))
    return ids[keep][:depth], np.asarray(scores, np.float32)[keep][:depth]


def _features(
    stage: Stage,
    request: RankingRequest,
    candidates: Candidates,
    rows: list[tuple[Any, ...]],
    shares: dict[str, float],
) -> npt.NDArray[np.float32]:
    state = stage.state
    at = np.searchsorted(state.item_ids, candidates.items)
    clipped = np.minimum(at, len(state.item_ids) - 1)
    known = (at < len(state.item_ids)) & (state.item_ids[clipped] == candidates.items)
    unknown = np.float32(np.nan)
    profile = request.content[1] if request.content else None
    facts = CandidateFacts(
        model_score=np.array([_dot(request.vector, r[5]) for r in rows], np.float32),
        content_similarity=np.array([_dot(profile, r[6]) for r in rows], np.float32),
        popularity=np.where(known, state.popularity[clipped], unknown),
        trend=np.where(known, state.trend[clipped], unknown),
        age_days=np.array([r[3] for r in rows], np.float32),
        category_affinity=category_affinity([list(r[2] or []) for r in rows], shares),
        attributes=numeric_attributes([r[4] for r in rows], stage.attributes),
    )
    recency = (time.time() - float(request.seen_at[0])) / DAY if len(request.seen_at) else 0.0
    return features_build(candidates, facts, activity=float(len(request.history)), recency_days=recency)


def _dot(query: npt.NDArray[np.float32] | None, vector: npt.NDArray[np.float32] | None) -> float:
    if query is None or vector is None:
        return float("nan")
    return float(np.dot(query, vector))


def _contributions(stage: Stage, features: npt.NDArray[np.float32]) -> list[list[dict[str, float | str]]]:
    """Per ranked item, the features that moved its score most (LightGBM's SHAP values)."""
    contributions = stage.ranker.contributions(features)[:, :-1]
    names = stage.ranker.names
    out = []
    for row in contributions:
        top = np.argsort(-np.abs(row))[:EXPLAIN_FEATURES]
        out.append([{"feature": names[k], "contribution": round(float(row[k]), 6)} for k in top])
    return out
