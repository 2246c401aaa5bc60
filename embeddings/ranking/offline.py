"""Training the ranking stage on the validation split: the same sources and features as serving,
computed from numpy arrays; judged against each single source on validation users it never saw."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from embeddings.evaluation import Split
from embeddings.ranking.features import CandidateFacts, category_affinity, feature_names, features_build
from embeddings.ranking.ranker import Group, Ranker, ndcg_at, order_by, ranker_fit
from embeddings.ranking.sources import (
    FAVOURITE_CATEGORIES,
    MISSING_RANK,
    RECENT_ITEMS,
    SOURCES,
    Candidates,
    CategoryIndex,
    candidates_merge,
    category_recent_scores,
    category_shares,
    cooccurrence_neighbours,
    cooccurrence_scores,
    top_scores,
)

TREND_DAYS = 14.0
DAY = 86_400.0


STATE_FORMAT = 2  # 2: the categories and each category's newest items are stored with the state


class StateOutdated(ValueError):
    """A state stored by an older run than this code serves from (its version needs a new run)."""


@dataclass
class RankingState:
    """Per-item arrays a version serves the stage from, rows aligned with ``item_ids`` (sorted).

    popularity : share of users with a positive entry, percent; recent : the same within the last
    TREND_DAYS of the data; trend : recent share / overall share (smoothed); neighbours : each
    item's strongest co-occurring items (CSR over the same rows); categories : the items'
    categories and each category's newest items (the category_recent source, no SQL at serving)
    """

    item_ids: npt.NDArray[np.int64]
    popularity: npt.NDArray[np.float32]
    recent: npt.NDArray[np.float32]
    trend: npt.NDArray[np.float32]
    neighbours: sp.csr_matrix
    categories: CategoryIndex | None = None
    popular_order: npt.NDArray[np.int64] = field(init=False)
    recent_order: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.popular_order = np.argsort(-self.popularity, kind="stable")[:1000]
        self.recent_order = np.argsort(-self.recent, kind="stable")[:1000]
        self.recent_order = self.recent_order[self.recent[self.recent_order] > 0]
        if self.categories is None:
            self.categories = CategoryIndex.empty(len(self.item_ids))

    def rows_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """(n,) each id's row, -1 for an id the state does not hold."""
        at = np.searchsorted(self.item_ids, ids)
        clipped = np.minimum(at, max(len(self.item_ids) - 1, 0))
        known = (at < len(self.item_ids)) & (self.item_ids[clipped] == ids) if len(self.item_ids) else at < 0
        return np.where(known, clipped, -1).astype(np.int64)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        n, c = self.neighbours, self.categories
        assert c is not None  # set by __post_init__
        np.savez(
            buffer,
            format=np.array(STATE_FORMAT),
            item_ids=self.item_ids,
            popularity=self.popularity,
            recent=self.recent,
            trend=self.trend,
            indptr=n.indptr,
            indices=n.indices,
            data=n.data,
            category_names=c.names,
            category_indptr=c.of_items.indptr,
            category_indices=c.of_items.indices,
            newest_indptr=c.newest_indptr,
            newest_ids=c.newest_ids,
            newest_at=c.newest_at,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RankingState:
        """The stored state; StateOutdated for one an older run stored."""
        with np.load(io.BytesIO(data)) as a:
            if "format" not in a.files or int(a["format"]) < STATE_FORMAT:
                raise StateOutdated("the ranking state predates this code: the version needs a new run")
            n = len(a["item_ids"])
            neighbours = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n, n))
            names = a["category_names"]
            indices = a["category_indices"]
            of_items = sp.csr_matrix(
                (np.ones(len(indices), np.float32), indices, a["category_indptr"]), shape=(n, len(names))
            )
            categories = CategoryIndex(names, of_items, a["newest_indptr"], a["newest_ids"], a["newest_at"])
            return cls(a["item_ids"], a["popularity"], a["recent"], a["trend"], neighbours, categories)


def ranking_state_build(
    matrix: sp.csr_matrix,
    times: sp.csr_matrix | None,
    item_ids: npt.NDArray[np.int64],
    *,
    reference: float,
    categories: CategoryIndex | None = None,
) -> RankingState:
    """Popularity, trend and co-occurrence of ``matrix`` (``times``: each entry's latest epoch
    second); ``categories`` are kept as given (serving needs them, the offline sources read
    ItemFacts)."""
    positive = (matrix > 0).astype(np.float32)
    counts = np.asarray(positive.sum(axis=0)).ravel()
    users = max(matrix.shape[0], 1)
    recent_counts = np.zeros_like(counts)
    if times is not None and times.nnz:
        recent = times.multiply(positive).tocsr()
        recent.data = (recent.data >= reference - TREND_DAYS * DAY).astype(np.float32)
        recent_counts = np.asarray(recent.sum(axis=0)).ravel()
    expected = counts * (recent_counts.sum() / max(counts.sum(), 1.0))
    trend = (recent_counts + 1.0) / (expected + 1.0)
    return RankingState(
        item_ids=np.asarray(item_ids, np.int64),
        popularity=(100.0 * counts / users).astype(np.float32),
        recent=(100.0 * recent_counts / users).astype(np.float32),
        trend=trend.astype(np.float32),
        neighbours=cooccurrence_neighbours(matrix),
        categories=categories,
    )


@dataclass
class ItemFacts:
    """What the database says of each matrix column: age (days before the reference time),
    categories, the operator's numeric attributes (n, A), content vectors (n, d) or None and the
    content version they came from."""

    ages_days: npt.NDArray[np.float32]
    categories: list[list[str]]
    attributes: npt.NDArray[np.float32]
    content: npt.NDArray[np.float32] | None
    content_version: int | None = None  # the content version ``content`` was read from
    newest_by_category: dict[str, npt.NDArray[np.int64]] = field(init=False)

    def __post_init__(self) -> None:
        by_category: dict[str, list[int]] = {}
        for item, categories in enumerate(self.categories):
            for category in categories:
                by_category.setdefault(category, []).append(item)
        self.newest_by_category = {
            c: np.array(sorted(items, key=lambda i: self.ages_days[i]), dtype=np.int64)
            for c, items in by_category.items()
        }


@dataclass
class UserRows:
    """One user's training rows: items (most recent first), weights, latest epoch seconds."""

    items: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    seen_at: npt.NDArray[np.float64]


def user_rows(train: sp.csr_matrix, times: sp.csr_matrix | None, user: int) -> UserRows:
    start, end = train.indptr[user], train.indptr[user + 1]
    items, weights = train.indices[start:end].astype(np.int64), train.data[start:end].astype(np.float32)
    seen = np.zeros(len(items), np.float64)
    if times is not None:
        row = times[user]
        lookup = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        seen = np.array([lookup.get(int(i), 0.0) for i in items], np.float64)
    order = np.lexsort((-weights, -seen))
    return UserRows(items[order], weights[order], seen[order])


def content_profile_vector(
    content: npt.NDArray[np.float32], rows: UserRows, *, reference: float, half_life_days: float
) -> npt.NDArray[np.float32] | None:
    """Recency-weighted mean of the user's items' content vectors, normalised (as serving's profile)."""
    vectors = content[rows.items]
    known = np.linalg.norm(vectors, axis=1) > 0
    if not known.any():
        return None
    age = np.maximum(reference - rows.seen_at[known], 0.0)
    weights = rows.weights[known] * np.exp2(-age / (half_life_days * DAY))
    profile = (weights[:, None] * vectors[known]).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    return (profile / norm).astype(np.float32) if norm > 1e-9 else None


@dataclass
class OfflineContext:
    """Everything the offline sources read (one validation split)."""

    split: Split
    times: sp.csr_matrix | None
    user_scores: Callable[[int], npt.NDArray[np.float32]]  # a user row's collaborative score per item
    state: RankingState
    items: ItemFacts
    reference: float
    half_life_days: float
    depth: int


def user_candidates(ctx: OfflineContext, user: int) -> tuple[Candidates, npt.NDArray[np.float32], float, float]:
    """A validation user's candidates, features and (activity, recency) from their train rows."""
    rows = user_rows(ctx.split.train, ctx.times, user)
    excluded = rows.items
    excluded_set = set(excluded.tolist())
    cf = ctx.user_scores(user)
    found = {"collaborative": top_scores(cf, ctx.depth, excluded)}
    profile = None
    if ctx.items.content is not None:
        profile = content_profile_vector(
            ctx.items.content, rows, reference=ctx.reference, half_life_days=ctx.half_life_days
        )
    content_scores = ctx.items.content @ profile if profile is not None and ctx.items.content is not None else None
    if content_scores is not None:
        found["content"] = top_scores(content_scores, ctx.depth, excluded)
    recent = rows.items[:RECENT_ITEMS]
    co_items, co_scores = cooccurrence_scores(ctx.state.neighbours, recent)
    keep = ~np.isin(co_items, excluded)
    found["cooccurrence"] = (co_items[keep][: ctx.depth], co_scores[keep][: ctx.depth])
    found["popular"] = _ordered(ctx.state.popular_order, ctx.state.popularity, excluded_set, ctx.depth)
    found["trending"] = _ordered(ctx.state.recent_order, ctx.state.recent, excluded_set, ctx.depth)
    shares = category_shares([ctx.items.categories[i] for i in recent])
    favourites = list(shares)[:FAVOURITE_CATEGORIES]
    found["category_recent"] = category_recent_scores(
        favourites, ctx.items.newest_by_category, ctx.items.ages_days, depth=ctx.depth, excluded=excluded_set
    )
    candidates = candidates_merge(found)
    c = candidates.items
    facts = CandidateFacts(
        model_score=cf[c],
        content_similarity=content_scores[c] if content_scores is not None else np.full(len(c), np.nan, np.float32),
        popularity=ctx.state.popularity[c],
        trend=ctx.state.trend[c],
        age_days=ctx.items.ages_days[c],
        category_affinity=category_affinity([ctx.items.categories[i] for i in c], shares),
        attributes=ctx.items.attributes[c],
    )
    recency = (ctx.reference - float(rows.seen_at.max())) / DAY if ctx.times is not None and len(rows.items) else 0.0
    activity = float(len(rows.items))
    return candidates, features_build(candidates, facts, activity=activity, recency_days=recency), activity, recency


def source_order_scores(ranks: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """A single source's ranking of the candidates: by its rank, what it did not retrieve last (NaN)."""
    return np.where(ranks < MISSING_RANK, -ranks.astype(np.float64), np.nan)


def _ordered(
    order: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], excluded: set[int], depth: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    picked = [i for i in order.tolist() if i not in excluded][:depth]
    items = np.array(picked, dtype=np.int64)
    return items, scores[items].astype(np.float32)


@dataclass
class StageOutcome:
    """The fitted ranker (None when it could not be fitted) and the validation report."""

    ranker: Ranker | None
    report: dict[str, Any]

    @property
    def wins(self) -> bool:
        return bool(self.report.get("used"))


def ranking_stage_train(
    ctx: OfflineContext,
    *,
    attributes: list[str],
    max_users: int,
    min_gain: float = 0.0,
    min_users: int = 0,
    seed: int = 42,
) -> StageOutcome:
    """Judge the ranker by 2-fold cross-fitting over (up to ``max_users``) validation users: fit on
    one half, score NDCG@10 on the other, against each single source on the same users (a source
    ranks only what it retrieved). It is used only when it beats the best source by more than
    ``min_gain`` (relative) on at least ``min_users`` users (fewer judge nothing but noise); the
    ranker kept is then fitted on all of them."""
    test = ctx.split.test
    users = np.flatnonzero(np.diff(test.indptr))
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    names = feature_names(attributes)
    groups, retrieved, relevant_total = [], np.zeros(len(SOURCES) + 1), 0
    for user in users.tolist():
        candidates, features, _, _ = user_candidates(ctx, user)
        relevant = test.indices[test.indptr[user] : test.indptr[user + 1]]
        labels = np.isin(candidates.items, relevant).astype(np.float32)
        groups.append(Group(features, labels, len(relevant)))
        hit = labels > 0
        retrieved[:-1] += (candidates.ranks[hit] < MISSING_RANK).sum(axis=0)
        retrieved[-1] += hit.sum()
        relevant_total += len(relevant)
    fold = rng.random(len(groups)) < 0.5
    ranked_ndcg = []
    for side in (True, False):
        ranker = ranker_fit([g for g, f in zip(groups, fold, strict=True) if f == side], names, seed=seed)
        judged = [g for g, f in zip(groups, fold, strict=True) if f != side]
        ranked_ndcg += [_ndcg(g, ranker.predict(g.features)) if ranker else 0.0 for g in judged]
    per_source = {
        name: round(float(np.mean([_ndcg(g, source_order_scores(g.features[:, len(SOURCES) + k])) for g in groups])), 5)
        if groups
        else 0.0
        for k, name in enumerate(SOURCES)
    }
    best = max(per_source, key=per_source.__getitem__)
    ranked = round(float(np.mean(ranked_ndcg)), 5) if ranked_ndcg else 0.0
    gain = ranked / per_source[best] - 1 if per_source[best] > 0 else 0.0
    final = ranker_fit(groups, names, seed=seed)
    report = {
        "ndcg@10": ranked,
        "best_source": best,
        "best_source_ndcg@10": per_source[best],
        "gain": round(gain, 4),
        "used": bool(final is not None and ranked > 0 and gain > min_gain and len(groups) >= min_users),
        "min_users": min_users,
        "sources_ndcg@10": per_source,
        "depth": ctx.depth,
        "recall@depth": {
            name: round(float(retrieved[k] / max(relevant_total, 1)), 4) for k, name in enumerate([*SOURCES, "union"])
        },
        "users": len(groups),
        "candidates_per_user": round(float(np.mean([len(g.labels) for g in groups])) if groups else 0.0, 1),
        "importances": final.importances() if final is not None else {},
        "features": names,
    }
    return StageOutcome(final, report)


def _ndcg(group: Group, scores: npt.NDArray[np.floating]) -> float:
    """NDCG@10 of an order; candidates without a score (NaN: a source did not retrieve them) never count as hits."""
    labels = np.where(np.isnan(scores), 0.0, group.labels).astype(np.float32)
    return ndcg_at(order_by(scores), labels, group.relevant)
