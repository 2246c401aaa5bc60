"""Offline ranking metrics on held-out interactions (numpy in, floats out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp


@dataclass(frozen=True)
class Split:
    """Train and test matrices of the same shape; a user's test items are absent from train."""

    train: sp.csr_matrix
    test: sp.csr_matrix


def holdout_split(matrix: sp.csr_matrix, *, test_fraction: float = 0.2, seed: int = 42) -> Split:
    """Per user, a random ``test_fraction`` of their positive items goes to test (users with ≥ 2).

    Parameters
    ----------
    matrix : (n_users, n_items) float32 CSR confidences; only positive entries can be test items
    """
    rng = np.random.default_rng(seed)
    coo = matrix.tocoo()
    is_test = np.zeros(coo.nnz, dtype=bool)
    order = np.argsort(coo.row, kind="stable")
    starts = np.searchsorted(coo.row[order], np.arange(matrix.shape[0] + 1))
    for user in range(matrix.shape[0]):
        entries = order[starts[user] : starts[user + 1]]
        positive = entries[coo.data[entries] > 0]
        n_test = int(len(positive) * test_fraction)
        if len(positive) >= 2 and n_test >= 1:
            is_test[rng.choice(positive, size=n_test, replace=False)] = True
    shape = matrix.shape
    train = sp.csr_matrix((coo.data[~is_test], (coo.row[~is_test], coo.col[~is_test])), shape=shape)
    test = sp.csr_matrix((np.ones(is_test.sum(), np.float32), (coo.row[is_test], coo.col[is_test])), shape=shape)
    return Split(train.astype(np.float32), test)


Recommender = Callable[[npt.NDArray[np.int64], int], npt.NDArray[np.int64]]


# Dense score rows per batch are (batch × n_items) float32: keep a batch near 80 MB.
BATCH_CELLS = 20_000_000


def ranking_metrics(
    recommend: Recommender, split: Split, *, k: int = 10, max_users: int | None = None, seed: int = 42
) -> dict[str, float]:
    """precision@k, recall@k, NDCG@k over users with test items, and catalogue coverage@k.

    ``recommend(users, k)`` returns an (len(users), k) int64 array of item columns ranked best
    first, with each user's train items already excluded (-1 pads missing slots). With
    ``max_users``, a seeded random sample of that many test users is scored (the same sample for
    every recommender evaluated with the same seed).
    """
    per_user = ranking_metrics_by_user(recommend, split, k=k, max_users=max_users, seed=seed)
    n = max(len(per_user.ndcg), 1)
    return {
        f"precision@{k}": float(per_user.precision.sum()) / n,
        f"recall@{k}": float(per_user.recall.sum()) / n,
        f"ndcg@{k}": float(per_user.ndcg.sum()) / n,
        f"coverage@{k}": len(per_user.recommended) / max(split.train.shape[1], 1),
        "users": float(len(per_user.ndcg)),
    }


@dataclass(frozen=True)
class UserMetrics:
    """Each scored user's precision@k, recall@k and NDCG@k (rows of ``users``), and every item
    recommended to any of them."""

    users: npt.NDArray[np.int64]
    precision: npt.NDArray[np.float64]
    recall: npt.NDArray[np.float64]
    ndcg: npt.NDArray[np.float64]
    recommended: set[int]


def ranking_metrics_by_user(
    recommend: Recommender, split: Split, *, k: int = 10, max_users: int | None = None, seed: int = 42
) -> UserMetrics:
    """``ranking_metrics`` per user, for paired comparisons of two recommenders on the same users."""
    users = np.flatnonzero(np.diff(split.test.indptr))
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    batch = max(1, min(1000, BATCH_CELLS // max(split.train.shape[1], 1)))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = (np.zeros(len(users)) for _ in range(3))
    recommended: set[int] = set()
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        top = recommend(chunk, k)
        for n, (user, ranked) in enumerate(zip(chunk, top, strict=True), start=start):
            relevant = split.test.indices[split.test.indptr[user] : split.test.indptr[user + 1]]
            hits = np.isin(ranked, relevant)
            recommended.update(int(i) for i in ranked if i >= 0)
            precision[n] = hits.sum() / k
            recall[n] = hits.sum() / min(len(relevant), k)
            ideal = discounts[: min(len(relevant), k)].sum()
            ndcg[n] = float((hits * discounts[: len(hits)]).sum() / ideal)  # fewer than k items
    return UserMetrics(users, precision, recall, ndcg, recommended)


def popularity_recommender(train: sp.csr_matrix) -> Recommender:
    """Most interacted items first (counting users with a positive entry), train items excluded."""
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    return scores_recommender(lambda users: np.broadcast_to(counts, (len(users), len(counts))).copy(), train)


def scores_recommender(
    score: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.floating[Any]]], train: sp.csr_matrix
) -> Recommender:
    """Top-k from a dense (users × items) score function, masking each user's train items."""

    def recommend(users: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
        # float32: ranking needs no more precision, and halves the memory traffic of the top-k.
        scores = np.array(score(users), dtype=np.float32)
        rows = train[users]
        scores[np.repeat(np.arange(len(users)), np.diff(rows.indptr)), rows.indices] = -np.inf
        top = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(top, order, axis=1)
        masked = np.take_along_axis(scores, ranked, axis=1) == -np.inf
        return np.where(masked, -1, ranked).astype(np.int64)

    return recommend


def earned_choice(per_user: dict[Any, npt.NDArray[np.float64]]) -> Any:
    """The first key of ``per_user`` (each a per-user metric, the same users in the same order),
    replaced by a later one only when its mean is higher than the one chosen so far by more than
    twice the standard error of the paired differences (z > 2): a change must earn its place."""
    keys = list(per_user)
    chosen = keys[0]
    for key in keys[1:]:
        difference = per_user[key] - per_user[chosen]
        error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else np.inf
        if difference.mean() > 2 * error:
            chosen = key
    return chosen
