"""The learners on small synthetic matrices with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.learners import LearnerParams, fit, fold_in, gram_matrix

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


def two_communities(users: int = 60, items: int = 40, seed: int = 0) -> sp.csr_matrix:
    """Users 0..29 like items 0..19, users 30..59 like items 20..39 (with a little noise)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((users, items), dtype=np.float32)
    half_u, half_i = users // 2, items // 2
    dense[:half_u, :half_i] = rng.random((half_u, half_i)) < 0.5
    dense[half_u:, half_i:] = rng.random((users - half_u, items - half_i)) < 0.5
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("algorithm", ["als", "bpr", "lmf", "ease"])
def test_each_algorithm_ranks_the_users_own_community_first(algorithm):
    matrix = two_communities()
    params = LearnerParams(
        algorithm=algorithm,
        factors=8,
        iterations=30 if algorithm != "als" else 10,
        learning_rate=0.05 if algorithm == "bpr" else 1.0,
    )

    factors = fit(matrix, params, use_gpu=False)

    scores = factors.user @ factors.item.T
    top = np.argsort(-scores, axis=1)[:, :10]
    own_community = np.where(np.arange(60)[:, None] < 30, top < 20, top >= 20)
    assert own_community.mean() > 0.9
    assert factors.user.dtype == factors.item.dtype == np.float32
    assert factors.user.shape == (60, factors.dimensions) and factors.item.shape == (40, factors.dimensions)


def test_als_is_deterministic_for_a_seed():
    matrix = two_communities()
    params = LearnerParams(factors=8, iterations=5, random_state=7)

    first, second = fit(matrix, params, use_gpu=False), fit(matrix, params, use_gpu=False)

    np.testing.assert_allclose(first.item, second.item, rtol=1e-5)


def test_fold_in_equals_implicits_own_user_recalculation():
    import implicit

    matrix = two_communities()
    matrix.data *= 3
    model = implicit.als.AlternatingLeastSquares(
        factors=8, regularization=0.1, alpha=2.0, iterations=5, random_state=0, use_gpu=False
    )
    model.fit(matrix, show_progress=False)
    row = matrix[5]

    expected = model.recalculate_user(5, row)
    actual = fold_in(
        model.item_factors[row.indices], row.data, gram=gram_matrix(model.item_factors), regularization=0.1, alpha=2.0
    )

    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_fold_in_of_a_new_user_points_at_their_community():
    matrix = two_communities()
    factors = fit(matrix, LearnerParams(factors=8, iterations=10), use_gpu=False)

    vector = fold_in(
        factors.item[[25, 26, 27]], np.array([1, 1, 1], np.float32), gram=gram_matrix(factors.item), regularization=0.05
    )

    top = np.argsort(-(factors.item @ vector))[:10]
    assert (top >= 20).mean() >= 0.9


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="algorithm"):
        LearnerParams(algorithm="svd")


def test_low_rank_ease_equals_full_ease_on_unseen_items_when_the_rank_suffices():
    rng = np.random.default_rng(1)
    distinct = (rng.random((12, 30)) < 0.3).astype(np.float32)
    matrix = sp.csr_matrix(np.repeat(distinct, 5, axis=0))  # 60 users, rank <= 12
    lam = 5.0
    x = matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(30))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)

    factors = fit(matrix, LearnerParams(algorithm="ease", factors=20, regularization=lam))

    unseen = x == 0
    np.testing.assert_allclose((factors.user @ factors.item.T)[unseen], (x @ b)[unseen], atol=1e-4)
    np.testing.assert_allclose(factors.user, x @ factors.item_in, atol=1e-4)


@pytest.mark.parametrize("beta", [-0.5, 0.7])
def test_ease_popularity_exponent_multiplies_each_items_scores_and_keeps_the_fold_in(beta):
    # Given EASE fitted without and with a popularity exponent β on the same matrix
    matrix = two_communities()
    plain = fit(matrix, LearnerParams(algorithm="ease", factors=10, regularization=20.0))
    tilted = fit(matrix, LearnerParams(algorithm="ease", factors=10, regularization=20.0, popularity=beta))

    # Then every score of item j is multiplied by (1 + users who liked j)^β
    users = np.diff(matrix.tocsc().indptr)
    expected = (plain.user @ plain.item.T) * (1.0 + users) ** beta
    np.testing.assert_allclose(tilted.user @ tilted.item.T, expected, rtol=1e-4, atol=1e-6)
    # And users still fold in as the sum of their weights times item_in
    np.testing.assert_allclose(tilted.user, matrix.toarray() @ tilted.item_in, atol=1e-5)
    np.testing.assert_allclose(tilted.item_in, plain.item_in)


def test_the_randomised_svd_of_large_catalogues_matches_the_exact_one(monkeypatch):
    """Above EXACT_SVD_MAX_ITEMS the SVD is a randomised subspace iteration: same singular values and
    subspace as ARPACK's on a matrix whose spectrum decays, so EASE scores do not change."""
    from embeddings import learners

    rng = np.random.default_rng(5)
    matrix = sp.csr_matrix(rng.random((300, 8)) @ rng.random((8, 120)) + 0.01 * rng.random((300, 120)))
    exact = learners.truncated_svd(matrix, 6, seed=1)
    monkeypatch.setattr(learners, "EXACT_SVD_MAX_ITEMS", 0)

    randomised = learners.truncated_svd(matrix, 6, seed=1)

    np.testing.assert_allclose(np.sort(randomised.sigma), np.sort(exact.sigma), rtol=1e-6)
    projection = lambda v: v @ v.T  # noqa: E731 (the subspace, whatever each vector's sign and order)
    np.testing.assert_allclose(projection(randomised.v), projection(exact.v), atol=1e-6)
    ease = {
        name: learners.fit_ease(matrix, factors=6, regularization=5.0, svd=svd)
        for name, svd in (("exact", exact), ("randomised", randomised))
    }
    np.testing.assert_allclose(
        ease["randomised"].user @ ease["randomised"].item.T, ease["exact"].user @ ease["exact"].item.T, atol=1e-4
    )


def test_the_randomised_svd_orthonormalises_blocks_of_items_never_of_users(monkeypatch):
    """At 100,000 users an (users × rank) QR a step cost more than the sparse products: the
    subspace iteration runs on XᵀX, whose blocks have a row per item."""
    from embeddings import learners

    rng = np.random.default_rng(5)
    matrix = sp.csr_matrix(rng.random((300, 8)) @ rng.random((8, 120)))
    shapes = []
    qr = np.linalg.qr
    monkeypatch.setattr(np.linalg, "qr", lambda a, *args, **kwargs: shapes.append(a.shape) or qr(a, *args, **kwargs))
    monkeypatch.setattr(learners, "EXACT_SVD_MAX_ITEMS", 0)

    learners.truncated_svd(matrix, 6, seed=1)

    assert shapes and {rows for rows, _ in shapes} == {120}


def test_threads_cut_the_users_into_blocks_and_give_the_same_factors(monkeypatch):
    from embeddings import learners

    rng = np.random.default_rng(6)
    matrix = sp.random(400, 150, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    monkeypatch.setattr(learners, "EXACT_SVD_MAX_ITEMS", 0)
    params = LearnerParams(algorithm="ease", factors=12, regularization=3.0)

    one, two = fit(matrix, params, threads=1), fit(matrix, params, threads=2)

    assert [block.shape[0] for block in learners.row_blocks(matrix, 2)] != [400]
    np.testing.assert_allclose(two.user @ two.item.T, one.user @ one.item.T, atol=1e-4)
