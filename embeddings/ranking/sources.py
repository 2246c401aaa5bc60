"""Candidate retrieval sources, each a (items, scores) list, merged into per-candidate score and rank.

The sources: the collaborative model, the content profile, items co-occurring with the user's
items, popular, trending, and recent items in the user's favourite categories. Offline (training
the ranker on the validation split) they are computed here from numpy arrays; when serving,
``embeddings.ranking.serving`` reads the collaborative and content ones from pgvector and the rest
from the same per-item arrays stored with the version, so both paths give the ranker the same kind
of candidate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

SOURCES = ("collaborative", "content", "cooccurrence", "popular", "trending", "category_recent")
MISSING_RANK = 10_000.0  # the rank of a candidate a source did not retrieve
COOCCURRENCE_NEIGHBOURS = 30  # per item, kept with the version
RECENT_ITEMS = 50  # a user's most recent items that co-occurrence and category affinity read
FAVOURITE_CATEGORIES = 3
COOCCURRENCE_BLOCK = 4_000_000  # co-count products per block (~50 MB of arrays while sorting)

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


def cooccurrence_neighbours(
    matrix: sp.csr_matrix, *, k: int = COOCCURRENCE_NEIGHBOURS, block: float = COOCCURRENCE_BLOCK
) -> sp.csr_matrix:
    """(n_items, n_items) CSR keeping each item's ``k`` strongest co-occurring items, by cosine of
    their binary user columns (an item is not its own neighbour; ties go to the lower index).

    matrix : (n_users, n_items) CSR; only positive entries count

    Sparse throughout: a block of items' co-counts is a sparse product, and each row's ``k`` best
    are picked by one sort of the block's entries. The dense version (a (block, n_items) array and
    an argpartition over every column) took 118 s of CPU on 100k items × 10k users × 1M entries
    (popularity ∝ rank^-0.8); this one 14 s, with the same neighbours.
    """
    n = matrix.shape[1]
    keep = min(k, n - 1)
    binary = (matrix > 0).astype(np.float32).tocsr()
    if keep <= 0 or binary.nnz == 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    norms = np.sqrt(np.maximum(np.asarray(binary.sum(axis=0)).ravel(), 1.0))
    by_item = binary.T.tocsr()
    # An item's co-counts can hold at most the summed activity of its users: blocks of items are
    # cut so that this bound stays under ``block``.
    work = by_item @ np.diff(binary.indptr).astype(np.float64)
    rows, cols, vals = [], [], []
    for start, end in _blocks(work, block):
        counts = (by_item[start:end] @ binary).tocsr()
        counts.sort_indices()  # ties below go to the lower column
        r = np.repeat(np.arange(start, end, dtype=np.int64), np.diff(counts.indptr))
        c = counts.indices.astype(np.int64)
        v = (counts.data / (norms[r] * norms[c])).astype(np.float32)
        other = (c != r) & (v > 0)
        r, c, v = r[other], c[other], v[other]
        # One stable sort of an int64 key, row then value descending (a positive float32's bits
        # grow with it, so their complement shrinks): 8× faster than a lexsort of the three columns.
        key = ((r - start) << 32) | (~v.view(np.uint32)).astype(np.int64)
        order = np.argsort(key, kind="stable")
        r, c, v = r[order], c[order], v[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
        best = rank < keep
        rows.append(r[best])
        cols.append(c[best])
        vals.append(v[best])
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
    )


def _blocks(work: npt.NDArray[np.float64], budget: float) -> list[tuple[int, int]]:
    """Consecutive (start, end) ranges whose summed ``work`` stays under ``budget`` (one item at
    least per range)."""
    cumulative = np.cumsum(work)
    edges = [0]
    while edges[-1] < len(work):
        done = cumulative[edges[-1] - 1] if edges[-1] else 0.0
        end = int(np.searchsorted(cumulative, done + budget, side="right"))
        edges.append(min(max(end, edges[-1] + 1), len(work)))
    return list(itertools.pairwise(edges))


def cooccurrence_scores(
    neighbours: sp.csr_matrix, recent: npt.NDArray[np.int64], weights: npt.NDArray[np.float32] | None = None
) -> Found:
    """Items co-occurring with ``recent`` (indices into ``neighbours``): summed similarity, best
    first (ties: the lower index first)."""
    keep = (recent >= 0) & (recent < neighbours.shape[0])
    recent = recent[keep]
    if not len(recent):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    at = csr_rows_positions(neighbours.indptr, recent)
    # Summed in float64 by bincount, in a fixed order (the rows' entries as stored): a sparse
    # product through scipy cost ~0.4 ms of a request's CPU for ~50 rows of 30 entries.
    similarity = neighbours.data[at].astype(np.float64)
    if weights is not None:
        lengths = np.diff(neighbours.indptr)[recent]
        similarity *= np.repeat(np.asarray(weights, np.float64)[keep], lengths)
    items, inverse = np.unique(neighbours.indices[at], return_inverse=True)
    summed = np.bincount(inverse, weights=similarity, minlength=len(items)).astype(np.float32)
    order = np.argsort(-summed, kind="stable")
    return items[order].astype(np.int64), summed[order]


def csr_rows_positions(indptr: npt.NDArray[np.integer], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Positions in a CSR matrix's ``indices`` and ``data`` of the entries of ``rows``, row after
    row (what ``matrix[rows]`` would hold, without building it)."""
    starts = np.asarray(indptr[rows], np.int64)
    lengths = np.asarray(indptr[rows + 1], np.int64) - starts
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


def members(ids: npt.NDArray[np.int64], sorted_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """(n,) whether each of ``ids`` is in ``sorted_ids`` (ascending): a binary search, without
    np.isin's sort of both arrays (7 calls a ranked request, ~0.5 ms of its CPU)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), np.bool_)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[at] == ids, np.bool_)


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


@dataclass(frozen=True)
class CategoryIndex:
    """The catalogue's categories as a version serves them (built by its run, kept per process).

    names : (C,) str, sorted
    of_items : (n_items, C) float32 CSR, 1 where a state item (a ``RankingState.item_ids`` row)
        belongs to a category
    newest_indptr : (C + 1,) int64; ``newest_ids[newest_indptr[c]:newest_indptr[c + 1]]`` are
        category c's newest visible items when the run read them (database ids, any item of the
        catalogue, interactions or not), newest first; ``newest_at`` their publication (or
        creation) time, epoch seconds
    """

    names: npt.NDArray[np.str_]
    of_items: sp.csr_matrix
    newest_indptr: npt.NDArray[np.int64]
    newest_ids: npt.NDArray[np.int64]
    newest_at: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, n_items: int = 0) -> CategoryIndex:
        return cls(
            np.empty(0, dtype=np.str_),
            sp.csr_matrix((n_items, 0), dtype=np.float32),
            np.zeros(1, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
        )

    def shares(self, rows: npt.NDArray[np.int64], total: int) -> npt.NDArray[np.float32]:
        """(C,) each category's share of ``total`` recent items, from those of them that are state
        rows (``rows``, distinct)."""
        if not len(rows) or not len(self.names):
            return np.zeros(len(self.names), np.float32)
        categories = self.of_items.indices[csr_rows_positions(self.of_items.indptr, rows)]
        counts = np.bincount(categories, minlength=len(self.names)).astype(np.float32)
        return counts / np.float32(max(total, 1))

    def favourites(self, shares: npt.NDArray[np.float32], n: int = FAVOURITE_CATEGORIES) -> npt.NDArray[np.int64]:
        """The ``n`` categories with the largest share, ties in name order."""
        present = np.flatnonzero(shares > 0)
        return present[np.lexsort((present, -shares[present]))][:n].astype(np.int64)

    def newest(
        self, favourites: npt.NDArray[np.int64], *, excluded: npt.NDArray[np.int64], depth: int, now: float
    ) -> Found:
        """The category_recent source: up to ``depth`` newest items of each favourite category (an
        item once, ``excluded`` (ascending) skipped), scored 1 / (1 + age in days at ``now``)."""
        ids, at = [], []
        for category in favourites.tolist():
            lo, hi = self.newest_indptr[category], self.newest_indptr[category + 1]
            some, when = self.newest_ids[lo:hi], self.newest_at[lo:hi]
            wanted = ~members(some, excluded)
            ids.append(some[wanted][:depth])
            at.append(when[wanted][:depth])
        if not ids:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        every = np.concatenate(ids)
        _, first = np.unique(every, return_index=True)
        order = np.sort(first)  # an item where its first category put it
        ages = (now - np.concatenate(at)[order]) / 86_400.0
        return every[order], (1.0 / (1.0 + np.maximum(ages, 0.0))).astype(np.float32)


def category_index_build(item_categories: list[list[str]], newest: list[tuple[str, int, float]]) -> CategoryIndex:
    """A CategoryIndex from each state item's categories (rows aligned with the state's items) and
    (category, item id, epoch seconds) rows of each category's newest items, newest first."""
    names = np.array(sorted({c for cs in item_categories for c in cs} | {row[0] for row in newest}), dtype=np.str_)
    code = {name: k for k, name in enumerate(names.tolist())}
    pairs = [(r, code[c]) for r, cs in enumerate(item_categories) for c in set(cs)]
    rows = np.array([p[0] for p in pairs], np.int64)
    cols = np.array([p[1] for p in pairs], np.int64)
    of_items = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (rows, cols)), shape=(len(item_categories), len(names)), dtype=np.float32
    )
    by_category = np.array([code[row[0]] for row in newest], np.int64)
    order = np.argsort(by_category, kind="stable")  # newest first within each category is kept
    indptr = np.zeros(len(names) + 1, np.int64)
    np.cumsum(np.bincount(by_category, minlength=len(names)), out=indptr[1:])
    return CategoryIndex(
        names,
        of_items,
        indptr,
        np.array([row[1] for row in newest], np.int64)[order],
        np.array([row[2] for row in newest], np.float64)[order],
    )


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
