"""Impressions without interactions as weak negatives in the training matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.interactions import build_matrix, weak_negatives_build, with_weak_negatives
from embeddings.learners import LearnerParams, fit

pytestmark = pytest.mark.unit


def _data():
    # users 10, 20; items 100, 200, 300; user 10 used 100, user 20 used 200 and disliked 300
    return build_matrix(
        np.array([10, 20, 20], dtype=np.int64),
        np.array([100, 200, 300], dtype=np.int64),
        np.array([2.0, 1.0, -4.0], dtype=np.float32),
    )


def test_shown_items_without_interaction_become_one_negative_entry_each():
    data = _data()
    shown_users = np.array([10, 10, 10, 20, 20, 99], dtype=np.int64)
    shown_items = np.array([200, 200, 100, 300, 100, 100], dtype=np.int64)

    negatives = weak_negatives_build(data, shown_users, shown_items, weight=0.5)

    assert negatives.shape == data.matrix.shape and negatives.dtype == np.float32
    # (10, 200) shown twice counts once; (10, 100) and (20, 300) have interactions; user 99 is unknown
    assert negatives.toarray().tolist() == [[0.0, -0.5, 0.0], [-0.5, 0.0, 0.0]]


def test_an_item_unknown_to_the_matrix_is_ignored():
    negatives = weak_negatives_build(_data(), np.array([10], np.int64), np.array([999], np.int64), weight=1.0)
    assert negatives.nnz == 0


def test_adding_negatives_never_overrides_an_entry():
    data = _data()
    confidences = data.matrix.copy()
    negatives = sp.csr_matrix(np.array([[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))

    combined = with_weak_negatives(confidences, negatives)

    assert combined.toarray().tolist() == [[2.0, -0.5, 0.0], [0.0, 1.0, -4.0]]
    assert with_weak_negatives(confidences, None) is confidences


def test_als_ranks_a_shown_and_ignored_item_below_an_unseen_twin():
    # Items 0 and 1 are used by the same users; user 0 was shown item 1 many times and never used it.
    rng = np.random.default_rng(0)
    dense = (rng.random((60, 12)) < 0.3).astype(np.float32)
    dense[:, 0] = dense[:, 1] = 0
    dense[1:40, 0] = dense[1:40, 1] = 1
    dense[0, :] = 0
    dense[0, 2:5] = 1
    data = build_matrix(*_coo(dense))
    params = LearnerParams(algorithm="als", factors=8, iterations=30, regularization=0.01, alpha=1.0, bm25=False)
    negatives = weak_negatives_build(data, np.array([0], np.int64), np.array([1], np.int64), weight=5.0)

    without = fit(data.matrix, params).scores(np.array([0]))[0]
    with_negatives = fit(with_weak_negatives(data.matrix, negatives), params).scores(np.array([0]))[0]

    assert without[1] == pytest.approx(without[0], rel=1e-3)  # twins score alike
    assert with_negatives[1] < 0.8 * with_negatives[0]


def _coo(dense):
    rows, cols = np.nonzero(dense)
    return rows.astype(np.int64), cols.astype(np.int64), dense[rows, cols].astype(np.float32)
