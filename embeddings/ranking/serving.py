"""The ranking stage at request time: candidates from every source, features, one LightGBM predict.

Round trips: the content ANN (when the user has a content profile), and one statement that runs the
collaborative ANN and reads every candidate's facts and scores (inner products computed by
PostgreSQL); popular, trending, co-occurring items and the favourite categories' newest items
come from the version's per-item state, loaded once per process.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings

from embeddings.models import ModelVersion, VersionArtifacts
from embeddings.ranking.features import (
    CandidateFacts,
    category_affinity,
    feature_names,
    features_build,
    numeric_attributes,
)
from embeddings.ranking.offline import DAY, RankingState, StateOutdated
from embeddings.ranking.ranker import Ranker, ranker_load
from embeddings.ranking.sources import (
    RECENT_ITEMS,
    Candidates,
    Found,
    candidates_merge,
    cooccurrence_scores,
    members,
)
from embeddings.serving import version_nearest_items
from embeddings.vectors.rows import Nearest, candidate_rows
from embeddings.vectors.search import Filters, Neighbour
from recsys.loaded_once import LoadedOnce
from recsys.rules.ruleset import NO_RULES, RuleSet, item_conditions

EXPLAIN_FEATURES = 3
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A version's ranker, its per-item state and whether validation says to use it by default.

    content_version : the content version whose vectors its content features were trained on (None:
    none was active); clock_offset : seconds from the training data's latest event to when the run
    read it: ages and recencies are measured from now less this, as they were in training (replayed
    or imported data ends years before the run)."""

    ranker: Ranker
    state: RankingState
    wins: bool
    depth: int
    attributes: tuple[str, ...]
    content_version: int | None = None
    clock_offset: float = 0.0
    content_checked: bool = True  # False: stored before the content version was recorded (any is read)

    def reads_content(self, version_id: int) -> bool:
        """Whether the content features of content version ``version_id`` are the ones it learned."""
        return not self.content_checked or version_id == self.content_version


_stages: LoadedOnce[Stage | None] = LoadedOnce()
_wins: LoadedOnce[bool] = LoadedOnce()  # whether the version's stage beat the best source on validation


def ranking_stage(version: ModelVersion) -> Stage | None:
    """The version's stage, read once per process (None when its run trained none): its state and
    ranker are megabytes, read while the first request that needs them waits, so the other threads
    of the process that need them meanwhile wait for that one read rather than each making their own
    (four did, and two requests passed the serving limit)."""
    return _stages.get(version.pk, lambda: _stage_read(version))


def _stage_read(version: ModelVersion) -> Stage | None:
    row = VersionArtifacts.objects.filter(version_id=version.pk).exclude(ranker="").first()
    stage = None
    if row is not None and row.ranking_state:
        names = list(row.ranking.get("features", []))
        attributes = tuple(n.removeprefix("attribute_") for n in names if n.startswith("attribute_"))
        try:
            state = RankingState.from_bytes(bytes(row.ranking_state))
            if names != feature_names(attributes):
                raise StateOutdated(f"its ranker's features {names} are not this code's")
        except StateOutdated as outdated:
            logger.warning("version %s: %s; served without the stage until a new run", version.pk, outdated)
        else:
            stage = Stage(
                ranker_load(row.ranker, names),
                state,
                row.ranking_used,
                int(row.ranking.get("depth", settings.RECSYS_RANKING_DEPTH)),
                attributes,
                row.ranking.get("content_version"),
                float(row.ranking.get("clock_offset_seconds", 0.0)),
                "content_version" in row.ranking,
            )
    return stage


def ranking_wanted(version: ModelVersion, ranking: bool | None) -> Stage | None:
    """The stage to serve with: ``ranking`` None = when RECSYS_RANKING is on and the stage beat the
    best source on validation, True = whenever the version has one (an experiment's ranked variant),
    False = never. Whether it won is a one-column read (once per process): a version whose stage
    lost is served without reading its state at all."""
    if ranking is False or (ranking is None and not settings.RECSYS_RANKING):
        return None
    if ranking is None and not _stage_won(version):
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
    """Retrieve from every source, build features, rank with one predict; the best ``limit``, scored
    on one positive scale (``positive_scores``)."""
    if request.content is not None and not stage.reads_content(request.content[0].pk):
        # Content features from another space than the ranker learned: served as for a user without a
        # content profile, a case its training saw.
        request = replace(request, content=None)
    now = time.time() - stage.clock_offset  # the training's clock (Stage)
    found, shares, excluded = _retrieve(stage, request, now)
    read = candidate_rows(
        ids=np.unique(np.concatenate([ids for ids, _ in found.values()])),
        item_table=request.version.item_table,
        vector_type=request.version.vector_type,
        vector=request.vector,
        content=(request.content[0].item_table, request.content[1]) if request.content else None,
        category=request.category,
        attributes=bool(stage.attributes),
        conditions=item_conditions(request.rules),
        # One search per ANN source: the 9 or so of 100 rows the filters drop (seen, hidden) made
        # pgvector 0.6 search again at 4× ef_search, 20 ms of PostgreSQL at 100k items.
        nearest=Nearest(stage.depth, excluded, request.version.served_ef_search),
    )
    found["collaborative"] = read.nearest
    candidates = candidates_merge(found)
    if not read.rows:
        return Ranked([], [] if explain else None)
    candidates, (external_ids, until), facts = facts_from_rows(
        stage.state, stage.attributes, candidates, read.rows, shares
    )
    facts = replace(
        facts,
        age_days=facts.age_days - np.float32(stage.clock_offset / DAY),
        # Offline, a candidate without a content vector scores 0 against a profile (a zero row).
        content_similarity=np.nan_to_num(facts.content_similarity) if request.content else facts.content_similarity,
    )
    recency = (now - float(request.seen_at[0])) / DAY if len(request.seen_at) else 0.0
    features = features_build(candidates, facts, activity=float(len(request.history)), recency_days=recency)
    scores = stage.ranker.predict(features)
    top = np.argsort(-scores, kind="stable")[: request.limit]
    best = float(scores[top[0]]) if len(top) else 0.0
    neighbours = [
        Neighbour(int(candidates.items[k]), external_ids[k], math.exp(float(scores[k]) - best), until[k])
        for k in top.tolist()
    ]
    return Ranked(neighbours, _contributions(stage, features[top]) if explain else None)


TOP_UP_DECAY = 0.95


def positive_scores(ranked: list[Neighbour], added: list[Neighbour]) -> list[Neighbour]:
    """A ranked answer on one positive scale, so that a boost's factor (``answer_rules_apply``)
    weighs every item alike: ``ranked`` come from ``ranked_list`` as exp(ranker score − the best),
    so a factor × lifts an item as + log(factor) to the ranker would; ``added`` (the model's own
    filtered search, after them: inner products, another scale) each get TOP_UP_DECAY × the score
    before it."""
    last = min((n.score for n in ranked), default=1.0)
    return ranked + [replace(n, score=last * TOP_UP_DECAY ** (k + 1)) for k, n in enumerate(added)]


def _retrieve(
    stage: Stage, request: RankingRequest, now: float
) -> tuple[dict[str, Found], dict[str, float], npt.NDArray[np.int64]]:
    """Each source's (item ids, scores) but the collaborative search's (it runs with the facts
    statement); the user's category shares (for the features); the excluded ids, ascending."""
    depth, state = stage.depth, stage.state
    excluded = np.sort(np.fromiter(request.excluded, np.int64, len(request.excluded)))
    found: dict[str, Found] = {}
    if request.content is not None:
        content, profile = request.content
        filters = Filters(tuple(request.excluded), request.category)
        found["content"] = _from_neighbours(
            version_nearest_items(content, profile, limit=depth, filters=filters, widen=False)
        )
    recent = np.asarray(request.history[:RECENT_ITEMS], np.int64)
    rows = state.rows_of(recent)
    rows = rows[rows >= 0]
    co_rows, co_scores = cooccurrence_scores(state.neighbours, rows)
    found["cooccurrence"] = _state_items(state.item_ids[co_rows], co_scores, excluded, depth)
    found["popular"] = _state_items(
        state.item_ids[state.popular_order], state.popularity[state.popular_order], excluded, depth
    )
    found["trending"] = _state_items(
        state.item_ids[state.recent_order], state.recent[state.recent_order], excluded, depth
    )
    index = state.categories
    assert index is not None  # RankingState sets it
    share = index.shares(rows, len(recent))
    found["category_recent"] = index.newest(index.favourites(share), excluded=excluded, depth=depth, now=now)
    return found, {str(index.names[c]): float(share[c]) for c in np.flatnonzero(share)}, excluded


def _from_neighbours(neighbours: list[Neighbour]) -> Found:
    return (
        np.array([n.item_id for n in neighbours], np.int64),
        np.array([n.score for n in neighbours], np.float32),
    )


def _state_items(
    ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], excluded: npt.NDArray[np.int64], depth: int
) -> Found:
    """The first ``depth`` of a source's (ids, scores), ``excluded`` ids (ascending) skipped."""
    keep = ~members(ids, excluded)
    return ids[keep][:depth], np.asarray(scores, np.float32)[keep][:depth]


def facts_from_rows(
    state: RankingState,
    attributes: tuple[str, ...],
    candidates: Candidates,
    rows: list[tuple[Any, ...]],
    shares: dict[str, float],
) -> tuple[Candidates, tuple[list[str], list[float | None]], CandidateFacts]:
    """The candidates that ``candidate_rows`` answered (``rows``, in any order), kept in candidate
    order, with their external ids and availability ends, and their facts (``shares``: the user's
    category shares). Columns are
    taken whole from the rows and put in candidate order by one permutation, not a Python loop
    over the candidates per column."""
    ids, external, categories, ages, attribute_rows, model, content, until = zip(*rows, strict=True)
    by_item = np.argsort(candidates.items, kind="stable")
    position = by_item[np.searchsorted(candidates.items, np.array(ids, np.int64), sorter=by_item)]
    order = np.argsort(position)  # rows in candidate order
    keep = position[order]
    candidates = Candidates(candidates.items[keep], candidates.scores[keep], candidates.ranks[keep])
    at = state.rows_of(candidates.items)
    known = at >= 0
    facts = CandidateFacts(
        model_score=np.array(model, np.float32)[order],  # None (no vector) becomes NaN
        content_similarity=np.array(content, np.float32)[order],
        # An item the state does not hold had no interactions in the run's data: offline, popularity
        # 0 and trend (0 + 1) / (0 + 1) = 1, not unknown (NaN would read as a trend of 0).
        popularity=np.where(known, state.popularity[at], np.float32(0.0)),
        trend=np.where(known, state.trend[at], np.float32(1.0)),
        age_days=np.array(ages, np.float32)[order],
        category_affinity=category_affinity([c or () for c in categories], shares)[order],
        attributes=numeric_attributes(list(attribute_rows), attributes)[order],
    )
    at_order = order.tolist()
    ends = [None if until[k] is None else float(until[k]) for k in at_order]
    return candidates, ([external[k] for k in at_order], ends), facts


def _stage_won(version: ModelVersion) -> bool:
    def read() -> bool:
        rows = VersionArtifacts.objects.filter(version_id=version.pk).exclude(ranker="")
        return bool(rows.values_list("ranking_used", flat=True).first())

    return _wins.get(version.pk, read)


def _contributions(stage: Stage, features: npt.NDArray[np.float32]) -> list[list[dict[str, float | str]]]:
    """Per ranked item, the features that moved its score most (LightGBM's SHAP values)."""
    contributions = stage.ranker.contributions(features)[:, :-1]
    names = stage.ranker.names
    out = []
    for row in contributions:
        top = np.argsort(-np.abs(row))[:EXPLAIN_FEATURES]
        out.append([{"feature": names[k], "contribution": round(float(row[k]), 6)} for k in top])
    return out
