"""Building the weighted CSR matrix from interaction arrays."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.interactions import (
    bm25_confidence,
    build_matrix,
    compact_ids,
    decay,
    events_from_array_copy,
)

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


def test_weights_of_repeated_pairs_are_summed_and_ids_mapped():
    users = np.array([10, 10, 30, 10], dtype=np.int64)
    items = np.array([7, 7, 7, 9], dtype=np.int64)
    weights = np.array([1, 2, 8, -4], dtype=np.float32)

    built = build_matrix(users, items, weights)

    assert built.user_ids.tolist() == [10, 30] and built.item_ids.tolist() == [7, 9]
    assert built.matrix.toarray().tolist() == [[3, -4], [8, 0]]
    assert built.matrix.dtype == np.float32


def test_a_like_cancelled_by_a_dislike_leaves_no_entry():
    built = build_matrix(np.array([1, 1]), np.array([5, 5]), np.array([4, -4], np.float32))

    assert built.matrix.nnz == 0


def test_decay_halves_weight_every_half_life():
    now = 100 * 86_400.0
    ages = np.array([now, now - 30 * 86_400, now - 60 * 86_400])

    assert decay(ages, now=now, half_life_days=30).tolist() == [1.0, 0.5, 0.25]
    assert decay(ages, now=now, half_life_days=None).tolist() == [1.0, 1.0, 1.0]


def test_bm25_keeps_dislikes_negative_and_likes_positive():
    built = build_matrix(np.array([1, 1, 2, 2, 3]), np.array([1, 2, 1, 2, 1]), np.array([4, -4, 1, 2, 8], np.float32))

    weighted = bm25_confidence(built.matrix).toarray()

    assert (np.sign(weighted) == np.sign(built.matrix.toarray())).all()


def _array(values: list[float], kind: str) -> bytes:
    if not values:
        return (0).to_bytes(4, "big") * 3
    element = np.zeros(len(values), dtype=[("len", ">i4"), ("value", kind)])
    element["len"], element["value"] = 8, values
    oid = 20 if kind == ">i8" else 701
    head = b"".join(v.to_bytes(4, "big") for v in (1, 0, oid, len(values), 1))
    return head + element.tobytes()


def _array_copy(groups: list[list[tuple[int, int, float, float]]], *, with_ts: bool = True) -> bytes:
    """A binary COPY with one row of arrays per group, as ``array_agg`` sends it."""
    out = b"PGCOPY\n\xff\r\n\x00" + bytes(4) + (3).to_bytes(4, "big") + b"ext"
    for rows in groups:
        columns = [[r[k] for r in rows] for k in range(4 if with_ts else 3)]
        kinds = (">i8", ">i8", ">f8", ">f8")
        fields = [_array(column, kind) for column, kind in zip(columns, kinds, strict=False)]
        out += len(fields).to_bytes(2, "big") + b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return out + b"\xff\xff"


@pytest.mark.parametrize("block", [1, 7, 50, 10_000])
def test_array_copy_parses_into_columns_whatever_the_block_boundaries(block: int) -> None:
    rows = [(1, 10, 1.5, 1_700_000_000.25), (2, 11, -4.0, 946_684_800.0), (3, 12, 8.0, 0.5)]
    data = _array_copy([rows[:2], rows[2:]])

    columns = events_from_array_copy([[data[i : i + block] for i in range(0, len(data), block)]])

    assert columns.user_ids.tolist() == [1, 2, 3] and columns.user_ids.dtype == np.int32  # ids that fit
    assert columns.item_ids.tolist() == [10, 11, 12]
    assert columns.weights.tolist() == [1.5, -4.0, 8.0] and columns.weights.dtype == np.float32
    assert columns.timestamps == pytest.approx([1_700_000_000.25, 946_684_800.0, 0.5], abs=1e-6)


@pytest.mark.parametrize("expected_rows", [0, 2, 3, 100])
def test_array_copies_grow_or_trim_the_columns_to_the_rows_read(expected_rows: int) -> None:
    rows = [(k, 2**40 + k if k == 4 else k, 1.0, 1_000.0 * k) for k in range(1, 6)]

    copies = [[_array_copy([rows[:2]])], [_array_copy([rows[2:4], rows[4:]])]]
    columns = events_from_array_copy(copies, expected_rows=expected_rows)

    assert columns.user_ids.tolist() == [1, 2, 3, 4, 5] and columns.user_ids.dtype == np.int32
    assert columns.item_ids.tolist() == [1, 2, 3, 2**40 + 4, 5] and columns.item_ids.dtype == np.int64
    assert len(columns.weights) == len(columns.timestamps) == 5


def test_array_copy_weighs_each_group_and_can_keep_no_timestamps() -> None:
    rows = [(1, 1, 2.0, 10.0), (2, 2, 3.0, 20.0), (3, 3, 4.0, 30.0)]

    columns = events_from_array_copy(
        [[_array_copy([rows[:2], rows[2:]])]], weigh=lambda w, ts: (w * ts).astype(np.float32), timestamps=False
    )

    assert columns.weights.tolist() == [20.0, 60.0, 120.0]
    assert len(columns.timestamps) == 0


def test_array_copy_without_timestamps_reads_three_arrays() -> None:
    columns = events_from_array_copy([[_array_copy([[(5, 6, 1.0, 0.0)]], with_ts=False)]], timestamps=False)

    assert (columns.user_ids.tolist(), columns.item_ids.tolist(), columns.weights.tolist()) == ([5], [6], [1.0])


def test_compact_ids_matches_numpy_unique_for_dense_and_sparse_ids() -> None:
    rng = np.random.default_rng(3)
    for ids in (rng.integers(0, 50, 200), rng.integers(0, 2**40, 200), np.array([7, 7, 7])):
        unique, position = compact_ids(ids)
        expected_unique, expected_position = np.unique(ids, return_inverse=True)
        assert unique.tolist() == expected_unique.tolist() and position.tolist() == expected_position.tolist()


def test_array_copy_of_nothing_and_truncated_streams() -> None:
    assert len(events_from_array_copy([]).user_ids) == 0
    assert len(events_from_array_copy([[_array_copy([])]]).weights) == 0
    with pytest.raises(ValueError, match="mid-row"):
        events_from_array_copy([[_array_copy([[(1, 2, 3.0, 4.0)]])[:-5]]])
    with pytest.raises(ValueError, match="not a PostgreSQL binary COPY"):
        events_from_array_copy([[b"user_id\titem_id\n" * 3]])
