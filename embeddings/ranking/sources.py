"""Candidate retrieval sources, each a (items, scores) list, merged into per-candidate score and rank.

The sources: the collaborative model, the content profile, items co-occurring with the user's
items, popular, trending, and recent items in the user's favourite categories. Offline (training
the ranker on the validation split) they are computed here from numpy arrays; when serving,
``embeddings.ranking.serving`` reads the collaborative and content ones from pgvector and the rest
from the same per-item arrays stored with the version, so both paths give the ranker the same kind
of candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

SOURCES = ("collaborative", "content", "cooccurrence", "popular", "trending", "category_recent")
MISSING_RANK = 10_000.0  # the rank of a candidate a source did not retrieve
COOCCURRENCE_NEIGHBOURS = 30  # per item, kept with the version
RECENT_ITEMS = 50  # a user's most recent items that co-occurrence and category affinity read
FAVOURITE_CATEGORIES = 3

Found = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Candidates:
    """The union of the sources' candidates.

    items : (n,) int64 item keys (matrix columns offline, database ids when serving)
    scores : (n, len(SOURCES)) float32, NaN where a source did not retrieve the item
    ranks : (n, len(SOURCES)) float32, 1 = a source's best, MISSING_RANK where absent
    """

    items: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    ranks: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.items)


def top_scores(scores: npt.NDArray[np.floating], depth: int, excluded: npt.NDArray[np.int64] | None = None) -> Found:
    """The ``depth`` best (index, score) of a dense score vector, ``excluded`` indices and -inf skipped."""
    scores = np.array(scores, dtype=np.float32)
    if excluded is not None and len(excluded):
        scores[excluded] = -np.inf
    depth = min(depth, len(scores))
    if depth == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-scores, depth - 1)[:depth]
    top = top[np.argsort(-scores[top], kind="stable")]
    top = top[np.isfinite(scores[top])]
    return top.astype(np.int64), scores[top]


def candidates_merge(found: dict[str, Found]) -> Candidates:
    """One row per distinct item of any source, in order of first appearance (sources in SOURCES
    order); each source's score, and its rank among the items it retrieved (best = 1)."""
    lists = [found.get(name, (np.empty(0, np.int64), np.empty(0, np.float32))) for name in SOURCES]
    every, values, columns, ranks_within = [], [], [], []
    for column, (source_items, source_scores) in enumerate(lists):
        order = np.argsort(-np.asarray(source_scores, np.float32), kind="stable")
        every.append(np.asarray(source_items, np.int64)[order])
        values.append(np.asarray(source_scores, np.float32)[order])
        columns.append(np.full(len(order), column, np.int64))
        ranks_within.append(np.arange(1, len(order) + 1, dtype=np.float32))
    flat = np.concatenate(every)
    items, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    appearance = np.argsort(first, kind="stable")
    position = np.empty(len(items), np.int64)
    position[appearance] = np.arange(len(items))
    rows = position[inverse]
    scores = np.full((len(items), len(SOURCES)), np.nan, dtype=np.float32)
    ranks = np.full((len(items), len(SOURCES)), MISSING_RANK, dtype=np.float32)
    scores[rows, np.concatenate(columns)] = np.concatenate(values)
    ranks[rows, np.concatenate(columns)] = np.concatenate(ranks_within)
    items = items[appearance]
    return Candidates(items, scores, ranks)


def cooccurrence_neighbours(matrix: sp.csr_matrix, *, k: int = COOCCURRENCE_NEIGHBOURS) -> sp.csr_matrix:
    """(n_items, n_items) CSR keeping each item's ``k`` strongest co-occurring items, by cosine of
    their binary user columns (an item is not its own neighbour).

    matrix : (n_users, n_items) CSR; only positive entries count
    """
    binary = (matrix > 0).astype(np.float32).tocsc()
    counts = np.asarray(binary.sum(axis=0)).ravel()
    norms = np.sqrt(np.maximum(counts, 1.0))
    by_item = binary.T.tocsr()
    n = matrix.shape[1]
    rows, cols, vals = [], [], []
    step = max(1, 2_000_000 // max(n, 1))  # rows of dense co-counts per block: ~8 MB
    for start in range(0, n, step):
        block = (by_item[start : start + step] @ binary).toarray()
        block /= norms[start : start + step, None] * norms[None, :]
        block[np.arange(len(block)), np.arange(start, start + len(block))] = 0.0
        keep = min(k, n - 1)
        if keep <= 0:
            continue
        top = np.argpartition(-block, keep - 1, axis=1)[:, :keep]
        values = np.take_along_axis(block, top, axis=1)
        mask = values > 0
        rows.append(np.repeat(np.arange(start, start + len(block)), keep)[mask.ravel()])
        cols.append(top.ravel()[mask.ravel()])
        vals.append(values.ravel()[mask.ravel()])
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
    )


def cooccurrence_scores(
    neighbours: sp.csr_matrix, recent: npt.NDArray[np.int64], weights: npt.NDArray[np.float32] | None = None
) -> Found:
    """Items co-occurring with ``recent`` (indices into ``neighbours``): summed similarity, best first."""
    recent = recent[(recent >= 0) & (recent < neighbours.shape[0])]
    if not len(recent):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    w = np.ones(len(recent), np.float32) if weights is None else np.asarray(weights, np.float32)
    summed = sp.csr_matrix(w[None, :]) @ neighbours[recent]
    summed = summed.tocsr()
    order = np.argsort(-summed.data, kind="stable")
    return summed.indices[order].astype(np.int64), summed.data[order].astype(np.float32)


def category_shares(history_categories: list[list[str]]) -> dict[str, float]:
    """Each category's share of the user's recent items (an item counts once per category), most
    frequent first: the first FAVOURITE_CATEGORIES keys are the user's favourites."""
    counts: dict[str, int] = {}
    for categories in history_categories:
        for category in set(categories):
            counts[category] = counts.get(category, 0) + 1
    total = max(len(history_categories), 1)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {category: count / total for category, count in ranked}


def category_recent_scores(
    favourites: list[str],
    newest_by_category: dict[str, npt.NDArray[np.int64]],
    ages_days: npt.NDArray[np.float32],
    *,
    depth: int,
    excluded: set[int],
) -> Found:
    """The newest items of the favourite categories (``newest_by_category``: item indices newest
    first), scored 1 / (1 + age in days)."""
    picked: list[int] = []
    seen: set[int] = set()
    for category in favourites:
        taken = 0
        for item in newest_by_category.get(category, np.empty(0, np.int64)).tolist():
            if item in excluded or item in seen:
                continue
            picked.append(item)
            seen.add(item)
            taken += 1
            if taken >= depth:
                break
    items = np.array(picked, dtype=np.int64)
    return items, (1.0 / (1.0 + np.maximum(ages_days[items], 0.0))).astype(np.float32)
