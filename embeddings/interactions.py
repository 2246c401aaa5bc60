"""Interaction arrays → a weighted float32 CSR users×items matrix with its id maps (no ORM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class InteractionMatrix:
    """``matrix[u, i]`` is the summed confidence of user row ``u`` for item column ``i``.

    ``user_ids[u]`` and ``item_ids[i]`` are the database ids (int64) behind each row and column.
    """

    matrix: sp.csr_matrix
    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[no-any-return]


def decay(timestamps: npt.NDArray[np.float64], *, now: float, half_life_days: float | None) -> npt.NDArray[np.float32]:
    """Weight multiplier 0.5 ** (age / half_life) per event; all ones without a half-life.

    Parameters
    ----------
    timestamps : (n,) float64, seconds since the epoch
    now : seconds since the epoch that ages are measured from
    half_life_days : age at which an event counts half; None disables decay
    """
    if not half_life_days:
        return np.ones(len(timestamps), dtype=np.float32)
    age_days = np.maximum(now - timestamps, 0.0) / SECONDS_PER_DAY
    return np.power(0.5, age_days / half_life_days).astype(np.float32)


def build_matrix(
    user_ids: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
) -> InteractionMatrix:
    """Sum the weights of each (user, item) pair into a CSR matrix with compact row/column maps.

    Parameters
    ----------
    user_ids, item_ids : (n,) int64 database ids of each event
    weights : (n,) float32 confidence of each event (negative for dislikes)

    Returns
    -------
    InteractionMatrix with ``matrix`` of shape (n_users, n_items), float32, duplicates summed,
    explicit zeros removed (a like cancelled by a dislike carries no signal).
    """
    users, rows = np.unique(user_ids, return_inverse=True)
    items, cols = np.unique(item_ids, return_inverse=True)
    matrix = sp.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(len(users), len(items)), dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return InteractionMatrix(matrix, users.astype(np.int64), items.astype(np.int64))


def bm25_confidence(matrix: sp.csr_matrix, *, k1: float = 100.0, b: float = 0.8) -> sp.csr_matrix:
    """BM25-weight the positive entries (damps heavy users and very popular items); keeps negatives.

    As implicit's ``bm25_weight`` but with idf = log(1 + n_users / df), which stays positive: an
    item nearly everyone liked must not turn into a dislike.

    Parameters
    ----------
    matrix : (n_users, n_items) float32 CSR confidences
    """
    positive = matrix.multiply(matrix > 0).tocsr()
    negative = matrix.multiply(matrix < 0).tocsr()
    coo = positive.tocoo()
    n_users = matrix.shape[0]
    idf = np.log1p(n_users / np.maximum(np.bincount(coo.col, minlength=matrix.shape[1]), 1))
    row_sums = np.asarray(positive.sum(axis=1)).ravel()
    length_norm = (1.0 - b) + b * row_sums / max(row_sums.mean(), 1e-9)
    data = coo.data * (k1 + 1.0) / (k1 * length_norm[coo.row] + coo.data) * idf[coo.col]
    weighted = sp.csr_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=matrix.shape)
    return (weighted + negative).tocsr()
