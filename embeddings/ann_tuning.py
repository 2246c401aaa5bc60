"""Each version's HNSW ef_search, chosen when it is trained, on its own vectors.

ef_search is how many candidates the index walks: more buys recall and costs PostgreSQL CPU on every
search. What a value buys depends on the vectors (their dimension, how their norms spread, how
clustered they are): on 100k generated items with ALS 64-d, recall@10 was 0.9885 at 20 and 0.9993 at
64; 200,000 factor-shaped vectors measured 0.9771 at 64 (BENCHMARKS.md, HNSW ef_search). So a fixed
setting is too dear for some catalogues and too loose for others. After a version's index is
built, the run measures recall@10 of the index search against the exact answer for a sample of the
version's own queries and keeps the smallest ef_search of a ladder that reaches
RECSYS_HNSW_TARGET_RECALL (a binary search over the ladder: recall grows with ef_search).

Recall counts a found item as right when its exact score is at least the k-th best exact score
(less a rounding tolerance), so ties at the boundary do not count as misses; for a halfvec table the
exact scores are those of the float16 vectors it holds.

The question measured is the served one: a user's top 10 among the items they have not seen (a
similar item's among the others), both in the index search and in the exact answer. A model fits
its users' own items, so those fill the top of the raw answer and the served 10 come from deeper in
the index's candidates, where its recall is lower: on ml-latest-small's EASE vectors the raw top
10 reached 0.99 at ef_search 128-160 while the served top 10 matched the exact one in 99.2-99.8% of
slots, each missed slot costing about as much NDCG@10 as an average one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from django.conf import settings

from embeddings.vectors.search import ef_search_first, index_search_ids, iterative_scans_available
from embeddings.vectors.tables import HALFVEC

if TYPE_CHECKING:
    from embeddings.models import ModelVersion

EF_SEARCH_LADDER = (16, 20, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400)
QUERIES = 300  # queries sampled: recall's standard error ~0.002 at 0.99 over 3,000 answers
K = 10


@dataclass(frozen=True)
class AnnChoice:
    ef_search: int
    recall: float  # recall@10 at that ef_search
    measured: dict[int, float]  # every ef_search measured and its recall


def version_ef_search_tune(
    version: ModelVersion,
    *,
    item_ids: npt.NDArray[np.int64],
    item_vectors: npt.NDArray[np.float32],
    query_vectors: npt.NDArray[np.float32],
    seed: int,
    queries_are_items: bool = False,
    seen: sp.csr_matrix | None = None,
    top_first: bool = False,
) -> None:
    """Set ``version.ef_search`` (and its ``ann_recall@10`` metric) from its item table, whose rows
    are ``item_ids`` with ``item_vectors``, searched with a sample of ``query_vectors``; with
    RECSYS_HNSW_TARGET_RECALL 0, or nothing to measure, the version keeps the setting's.
    ``queries_are_items``: the queries are rows of ``item_vectors`` (similar items), and each
    query's own item, which similar items never answer, is left out of both answers. ``seen``:
    (queries × items, columns aligned with ``item_ids``) each user's items, which their served
    search skips, left out of both answers. ``top_first``: where the target is likely missed (a
    cut of a version whose index missed it), the ladder's top is measured first (``smallest_reaching``)."""
    target = settings.RECSYS_HNSW_TARGET_RECALL
    rows = queries_sample(query_vectors, seed=seed)
    if not target or not len(item_ids) or not len(rows):
        return
    ids = np.asarray(item_ids, np.int64)
    skip = None
    if queries_are_items:
        skip = [ids[[row]] for row in rows]
    elif seen is not None:
        counts = np.diff(seen.indptr)[rows]
        rows = rows[counts <= len(ids) - K]  # a user who has seen all but a few items has no top 10 to find
        if not len(rows):
            return
        skip = [ids[seen.indices[seen.indptr[row] : seen.indptr[row + 1]]] for row in rows]
    choice = ef_search_choose(
        table=version.item_table,
        vector_type=version.vector_type,
        item_ids=item_ids,
        item_vectors=item_vectors,
        queries=np.ascontiguousarray(query_vectors[rows], dtype=np.float32),
        skip=skip,
        target=target,
        top_first=top_first,
    )
    version.ef_search = choice.ef_search
    version.metrics["ann_recall@10"] = round(choice.recall, 5)


def ef_search_choose(
    *,
    table: str,
    vector_type: str,
    item_ids: npt.NDArray[np.int64],
    item_vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    target: float,
    skip: list[npt.NDArray[np.int64]] | None = None,
    top_first: bool = False,
) -> AnnChoice:
    """The smallest ef_search of the ladder whose recall@10 on ``queries`` reaches ``target`` in
    ``table`` (whose rows are ``item_ids`` with ``item_vectors``); the ladder's largest when none
    does. ``skip``: per query, the item ids its served search skips (a user's seen items, a similar
    item's own), left out of both answers.

    On pgvector < 0.8 the index answers at most ef_search candidates before the skipped ones are
    dropped, and the served search starts at ``ef_search_first`` of a rung (never below the
    setting's), so each rung is measured at that breadth; a query left with fewer than 10 there is
    one the served search widens for (``embeddings.vectors.search``), and is not counted.
    ``top_first``: see ``smallest_reaching``."""
    if vector_type == HALFVEC:  # the exact answer of what the table holds and the query it is sent
        item_vectors = item_vectors.astype(np.float16).astype(np.float32)
        queries = queries.astype(np.float16).astype(np.float32)
    exact = _ExactAnswers(item_ids, item_vectors, queries, skip=skip)
    widens = not iterative_scans_available()

    def recall(ef_search: int) -> float:
        served = ef_search_first(K, 1, ef_search) if widens else ef_search
        found = index_search_ids(table, queries, vector_type=vector_type, limit=K, ef_search=served, skip=skip)
        counted = [row for row, ids in enumerate(found) if not widens or len(ids) >= exact.k]
        return exact.recall(found, rows=counted) if counted else 0.0  # no query answered: not this breadth

    value, measured = smallest_reaching(EF_SEARCH_LADDER, recall, target, top_first=top_first)
    return AnnChoice(value, measured[value], measured)


def smallest_reaching(
    ladder: Sequence[int], measure: Callable[[int], float], target: float, *, top_first: bool = False
) -> tuple[int, dict[int, float]]:
    """The smallest rung whose ``measure`` reaches ``target`` (the measure non-decreasing along the
    ladder), by binary search; the largest rung when none does. Also every rung measured.
    ``top_first``: measure the largest rung first and stop there when it misses the target (one
    measurement instead of a search, where a miss is likely)."""
    measured: dict[int, float] = {}
    low, high = 0, len(ladder) - 1
    if top_first:
        measured[ladder[high]] = measure(ladder[high])
        if measured[ladder[high]] < target:
            return ladder[high], measured
    while low < high:
        middle = (low + high) // 2
        measured[ladder[middle]] = measure(ladder[middle])
        if measured[ladder[middle]] >= target:
            high = middle
        else:
            low = middle + 1
    if ladder[low] not in measured:
        measured[ladder[low]] = measure(ladder[low])
    return ladder[low], measured


def queries_sample(vectors: npt.NDArray[np.float32], *, seed: int, size: int = QUERIES) -> npt.NDArray[np.int64]:
    """Up to ``size`` row numbers of ``vectors`` that are not all zero, drawn without replacement, ascending."""
    usable = np.flatnonzero(np.any(vectors != 0, axis=1))
    rows = np.random.default_rng(seed).choice(usable, size=min(size, len(usable)), replace=False)
    return np.sort(rows)


class _ExactAnswers:
    """Each query's k-th best exact score, what an index answer is judged by; item columns are
    scored in chunks, so a large catalogue never needs a queries × items matrix at once."""

    CHUNK = 50_000  # item columns scored at a time: 300 queries × 50,000 float32 = 60 MB

    def __init__(
        self,
        item_ids: npt.NDArray[np.int64],
        item_vectors: npt.NDArray[np.float32],
        queries: npt.NDArray[np.float32],
        k: int = K,
        skip: list[npt.NDArray[np.int64]] | None = None,
    ) -> None:
        self.items = np.asarray(item_vectors, np.float32)
        self.queries = np.asarray(queries, np.float32)
        self.columns = {int(item): column for column, item in enumerate(np.asarray(item_ids).tolist())}
        # (query, column) of every skipped item the table holds
        pairs = [(q, self.columns[int(i)]) for q, ids in enumerate(skip or ()) for i in ids if int(i) in self.columns]
        rows = np.array([q for q, _ in pairs], np.int64)
        columns = np.array([c for _, c in pairs], np.int64)
        fewest = len(self.items) - (int(np.bincount(rows, minlength=len(self.queries)).max()) if len(rows) else 0)
        self.k = k = max(min(k, fewest), 0)
        best = np.full((len(self.queries), 0), -np.inf, np.float32)
        for start in range(0, len(self.items), self.CHUNK):
            scores = self.queries @ self.items[start : start + self.CHUNK].T
            inside = (columns >= start) & (columns < start + self.CHUNK)  # skipped: not among the answers
            scores[rows[inside], columns[inside] - start] = -np.inf
            merged = np.concatenate([best, scores], axis=1)
            keep = min(k, merged.shape[1])
            best = -np.partition(-merged, keep - 1, axis=1)[:, :keep]
        kth = best.min(axis=1) if k > 0 else np.full(len(self.queries), np.inf, np.float32)
        self.threshold = kth - 1e-4 * np.maximum(np.abs(kth), 1.0)  # float32 (halfvec: float16) rounding

    def recall(self, found: Sequence[npt.NDArray[np.int64]], rows: Sequence[int] | None = None) -> float:
        """The share of the k answers each query (of ``rows``: every one by default) should have
        that ``found`` holds."""
        counted = range(len(found)) if rows is None else rows
        if not len(counted) or self.k <= 0:
            return 1.0
        right = 0
        for row in counted:
            columns = [self.columns[int(i)] for i in found[row][: self.k] if int(i) in self.columns]
            scores = self.items[columns] @ self.queries[row]
            right += int(np.count_nonzero(scores >= self.threshold[row]))
        return right / (self.k * len(counted))


def stored_version_ef_search_tune(version: ModelVersion) -> None:
    """Choose (again) the ef_search of a version already stored, from the vectors in its tables: a
    version trained before versions chose their own, or after RECSYS_HNSW_TARGET_RECALL changed.
    Saves the version; serving processes see it when they next re-read the active version."""
    from embeddings.models import Kind
    from embeddings.vectors.rows import vectors_matrix
    from recsys.models import Item, User

    item_ids, item_vectors = vectors_matrix(
        version.item_table, "item_id", list(Item.objects.values_list("pk", flat=True))
    )
    seen = None
    if version.kind == Kind.CONTENT:
        query_vectors = item_vectors  # similar items by content search with items' own vectors
    else:
        users = np.array(User.objects.values_list("pk", flat=True), np.int64)
        sample = np.random.default_rng(version.pk).choice(users, size=min(len(users), 4 * QUERIES), replace=False)
        user_ids, query_vectors = vectors_matrix(version.user_table, "user_id", np.sort(sample))
        seen = _seen_matrix(np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64))
    version_ef_search_tune(
        version,
        item_ids=item_ids,
        item_vectors=item_vectors,
        query_vectors=query_vectors,
        seed=version.pk,
        queries_are_items=version.kind == Kind.CONTENT,
        seen=seen,
    )
    version.save(update_fields=["ef_search", "metrics"])


def _seen_matrix(user_ids: npt.NDArray[np.int64], item_ids: npt.NDArray[np.int64]) -> sp.csr_matrix:
    """(users × items) 1 where the user has an interaction with the item: what their served search skips."""
    from recsys.models import Interaction

    if not len(user_ids) or not len(item_ids):
        return sp.csr_matrix((len(user_ids), len(item_ids)), dtype=np.float32)
    pairs = np.array(
        list(Interaction.objects.filter(user_id__in=user_ids.tolist()).values_list("user_id", "item_id").distinct()),
        np.int64,
    ).reshape(-1, 2)
    user_order, item_order = np.argsort(user_ids), np.argsort(item_ids)
    rows = user_order[np.searchsorted(user_ids, pairs[:, 0], sorter=user_order)]
    columns = np.searchsorted(item_ids, pairs[:, 1], sorter=item_order)
    known = columns < len(item_ids)
    columns = item_order[np.minimum(columns, len(item_ids) - 1)]
    known &= item_ids[columns] == pairs[:, 1]
    shape = (len(user_ids), len(item_ids))
    return sp.csr_matrix((np.ones(int(known.sum()), np.float32), (rows[known], columns[known])), shape=shape)
