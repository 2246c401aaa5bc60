"""Offline metrics: split properties and metric values on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.evaluation import Split, holdout_split, popularity_recommender, ranking_metrics, scores_recommender

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


def test_holdout_moves_a_fraction_of_each_users_positives_to_test():
    matrix = sp.csr_matrix(np.ones((20, 10), dtype=np.float32))

    split = holdout_split(matrix, test_fraction=0.2, seed=1)

    assert np.diff(split.test.indptr).tolist() == [2] * 20
    assert split.train.multiply(split.test).nnz == 0
    assert split.train.nnz + split.test.nnz == matrix.nnz


def test_perfect_recommender_scores_one_and_a_wrong_one_zero():
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32))
    split = Split(train, test)

    perfect = ranking_metrics(lambda users, k: np.array([[1, 2], [2, 0]])[users], split, k=2)
    wrong = ranking_metrics(lambda users, k: np.array([[3, 2], [3, 0]])[users], split, k=2)

    assert perfect["ndcg@2"] == pytest.approx(1.0) and perfect["recall@2"] == 1.0
    assert perfect["precision@2"] == 0.5
    assert wrong["ndcg@2"] == 0.0 and wrong["recall@2"] == 0.0


def test_ndcg_discounts_a_hit_at_rank_two():
    split = Split(sp.csr_matrix((1, 3), dtype=np.float32), sp.csr_matrix(np.array([[0, 1, 0]], np.float32)))

    metrics = ranking_metrics(lambda users, k: np.array([[0, 1]]), split, k=2)

    assert metrics["ndcg@2"] == pytest.approx(1 / np.log2(3))


def test_a_catalogue_smaller_than_k_is_ranked_whole():
    split = Split(sp.csr_matrix((1, 3), dtype=np.float32), sp.csr_matrix(np.array([[0, 0, 1]], np.float32)))
    scores = scores_recommender(lambda users: np.array([[0.1, 0.3, 0.2]]), split.train)

    metrics = ranking_metrics(scores, split, k=10)

    assert metrics["ndcg@10"] == pytest.approx(1 / np.log2(3))


def test_popularity_excludes_train_items_and_ranks_by_count():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=np.float32))

    top = popularity_recommender(train)(np.array([0, 1]), 2)

    assert top.tolist() == [[2, 3], [1, 2]]
