"""Interaction arrays → a weighted float32 CSR users×items matrix with its id maps (no ORM)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

SECONDS_PER_DAY = 86_400.0
PG_EPOCH_SECONDS = 946_684_800.0  # binary COPY counts timestamps in µs from 2000-01-01


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


# One row of ``COPY (SELECT user_id, item_id, weight, timestamp ...) TO STDOUT (FORMAT BINARY)``:
# a field count, then per column its byte length and big-endian value (int8, int8, float8, timestamptz).
COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("user_len", ">i4"),
        ("user", ">i8"),
        ("item_len", ">i4"),
        ("item", ">i8"),
        ("weight_len", ">i4"),
        ("weight", ">f8"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
    ]
)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


@dataclass(frozen=True)
class EventColumns:
    """Interactions as columns: (n,) int64 user and item ids, float32 weights, float64 Unix seconds."""

    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.float64]


def events_from_binary_copy(blocks: Iterable[bytes], *, chunk_rows: int = 1_000_000) -> EventColumns:
    """Parse a binary COPY of (user_id, item_id, weight, timestamp) straight into numpy columns.

    No Python object per row: blocks are gathered until ``chunk_rows`` rows are complete, decoded
    with one ``np.frombuffer`` and narrowed, so the peak beyond the result is one chunk (50 MB).
    """
    pending = bytearray()
    parts: list[EventColumns] = []
    header_done = False
    chunk_bytes = chunk_rows * COPY_ROW.itemsize
    for block in blocks:
        pending += block
        if not header_done:
            if len(pending) < 19 or len(pending) < _copy_header_size(pending):
                continue
            del pending[: _copy_header_size(pending)]
            header_done = True
        if len(pending) >= chunk_bytes:
            complete = len(pending) - len(pending) % COPY_ROW.itemsize
            parts.append(_copy_rows(pending[:complete]))
            del pending[:complete]
    if header_done:
        if pending[-2:] != b"\xff\xff" or (len(pending) - 2) % COPY_ROW.itemsize:
            raise ValueError("binary COPY ended mid-row or without its trailer")
        parts.append(_copy_rows(pending[:-2]))
    if not parts:
        empty = np.zeros(0)
        return EventColumns(empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.float32), empty)
    return EventColumns(*(np.concatenate([getattr(p, f) for p in parts]) for f in EventColumns.__dataclass_fields__))


def _copy_header_size(buffer: bytearray) -> int:
    if bytes(buffer[:11]) != _COPY_SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY stream")
    extension = int.from_bytes(buffer[15:19], "big")
    return 19 + extension


def _copy_rows(data: bytearray) -> EventColumns:
    rows = np.frombuffer(bytes(data), dtype=COPY_ROW)
    lengths = (rows["user_len"], rows["item_len"], rows["weight_len"], rows["ts_len"])
    if len(rows) and ((rows["fields"] != 4).any() or any((length != 8).any() for length in lengths)):
        raise ValueError("unexpected row shape in binary COPY (a NULL or another column type)")
    return EventColumns(
        rows["user"].astype(np.int64),
        rows["item"].astype(np.int64),
        rows["weight"].astype(np.float32),
        rows["ts"].astype(np.float64) / 1e6 + PG_EPOCH_SECONDS,
    )


def latest_times(
    data: InteractionMatrix,
    user_ids: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    timestamps: npt.NDArray[np.float64],
) -> sp.csr_matrix:
    """(n_users, n_items) float64 CSR over ``data``'s rows and columns: the latest epoch second of
    each (user, item) pair's events (the events are the ones ``data`` was built from)."""
    rows = np.searchsorted(data.user_ids, user_ids)
    cols = np.searchsorted(data.item_ids, item_ids)
    keys = rows.astype(np.int64) * data.shape[1] + cols
    order = np.lexsort((timestamps, keys))
    ordered = keys[order]
    last = np.append(ordered[1:] != ordered[:-1], True) if len(ordered) else np.zeros(0, bool)
    picked = order[last]
    return sp.csr_matrix(
        (np.asarray(timestamps, np.float64)[picked], (rows[picked], cols[picked])), shape=data.shape, dtype=np.float64
    )
