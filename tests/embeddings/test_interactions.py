"""Building the weighted CSR matrix from interaction arrays."""

from __future__ import annotations

import numpy as np

from embeddings.interactions import bm25_confidence, build_matrix, decay


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
