"""Collaborative learners: thin wrappers over implicit's ALS, BPR and LMF (numpy in, numpy out)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

ALGORITHMS = ("als", "bpr", "lmf", "ease")


@dataclass(frozen=True)
class LearnerParams:
    """Hyper-parameters of one training run; ``extra`` passes anything else implicit accepts."""

    algorithm: str = "als"
    factors: int = 64
    regularization: float = 0.05
    iterations: int = 15
    alpha: float = 1.0
    learning_rate: float = 0.01
    random_state: int = 42
    bm25: bool = False  # BM25-weight the confidences before fitting (implicit learners)
    # EASE only: β of the item vectors' factor (1 + users with a positive weight)^β; β < 0 discounts
    # popular items (RP3β's correction, Paudel et al. 2017), ranking each user's items anew.
    popularity: float = 0.0
    # Mean weight of the data the parameters were searched on (embeddings.tuning): informational,
    # the stored alpha and regularization already apply to raw weights.
    weight_scale: float | None = None
    # EASE only: the rank of the SVD whose leading ``factors`` components it is built from (a rank
    # probe of the search, ``embeddings.tuning``); None: an SVD of rank ``factors``. A small rank cut
    # from a larger SVD keeps more of the matrix than a randomised SVD of that small rank computes.
    svd_rank: int | None = None
    # How the summed weights are read (embeddings.interactions.WEIGHTINGS), in units of weight_scale:
    # the tuning search chooses it; training and fold-in read a user's weights the same way.
    weighting: str = "raw"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be positive")
        if self.weighting not in ("raw", "log", "binary"):
            raise ValueError(f"weighting must be raw, log or binary, got {self.weighting!r}")
        if self.svd_rank is not None and self.svd_rank < self.factors:
            raise ValueError(f"svd_rank must be at least factors ({self.factors}), got {self.svd_rank}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Factors:
    """Learned embeddings: ``user @ item.T`` are the model's scores.

    user : (n_users, d) float32, rows aligned with the training matrix
    item : (n_items, d) float32, rows aligned with its columns
    """

    user: npt.NDArray[np.float32]
    item: npt.NDArray[np.float32]
    # Low-rank EASE folds a user in as Σ weight × item_in (the left factor of its item-item model).
    item_in: npt.NDArray[np.float32] | None = None

    @property
    def dimensions(self) -> int:
        return int(self.item.shape[1])

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """(len(users), n_items) scores of the given user rows for every item."""
        return self.user[users] @ self.item.T


def cuda_available() -> bool:
    try:
        import implicit.gpu

        return bool(implicit.gpu.HAS_CUDA)
    except ImportError:
        return False


def make_model(params: LearnerParams, *, use_gpu: bool | None = None) -> Any:
    """An unfitted implicit model; on GPU when CUDA is present (and not refused)."""
    import implicit

    if params.algorithm == "ease":
        raise ValueError("ease is not an implicit model; call fit()")
    gpu = cuda_available() if use_gpu is None else use_gpu
    common = {
        "factors": params.factors,
        "regularization": params.regularization,
        "random_state": params.random_state,
        "iterations": params.iterations,
        **params.extra,
    }
    if params.algorithm == "als":
        return implicit.als.AlternatingLeastSquares(alpha=params.alpha, use_gpu=gpu, **common)
    if params.algorithm == "bpr":
        return implicit.bpr.BayesianPersonalizedRanking(learning_rate=params.learning_rate, use_gpu=gpu, **common)
    return implicit.lmf.LogisticMatrixFactorization(learning_rate=params.learning_rate, **common)


def fit(
    user_items: sp.csr_matrix,
    params: LearnerParams,
    *,
    use_gpu: bool | None = None,
    svd_cache: dict[int, Svd] | None = None,
    threads: int = 1,
) -> Factors:
    """Learn user and item factors from a (n_users, n_items) float32 CSR confidence matrix.

    BPR and LMF read only which entries are positive; ALS uses the confidences (negative
    values are dislikes). EASE candidates that differ only in λ (or in a ``svd_rank`` cut) share one
    SVD through ``svd_cache`` (rank → SVD of this matrix); its sparse products run on ``threads`` blocks of
    users (implicit's learners use every core on their own).
    """
    from threadpoolctl import threadpool_limits

    if params.algorithm == "ease":
        rank = params.svd_rank or params.factors
        svd = svd_cache.get(rank) if svd_cache is not None else None
        if svd is None:
            svd = truncated_svd(user_items, rank, seed=params.random_state, threads=threads)
            if svd_cache is not None:
                svd_cache[rank] = svd
        if rank != params.factors:
            svd = svd.leading(params.factors)
        return fit_ease(
            user_items,
            factors=params.factors,
            regularization=params.regularization,
            popularity=params.popularity,
            svd=svd,
            threads=threads,
        )
    model = make_model(params, use_gpu=use_gpu)
    matrix = user_items if params.algorithm == "als" else (user_items > 0).astype(np.float32).tocsr()
    with threadpool_limits(1, "blas"):  # implicit is ~10x slower when BLAS threads fight its own
        model.fit(matrix.astype(np.float32).tocsr(), show_progress=False)
    if hasattr(model, "to_cpu"):
        model = model.to_cpu()
    return Factors(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


def fold_in(
    rows: npt.NDArray[np.float32],
    confidences: npt.NDArray[np.float32],
    *,
    gram: npt.NDArray[np.float64],
    regularization: float,
    alpha: float = 1.0,
) -> npt.NDArray[np.float32]:
    """An ALS user vector for one user from fixed item factors (no retraining).

    The exact user step of implicit's ALS: with c = alpha x confidence per item,
    (YᵀY + λI + Σ (|c| - 1) y yᵀ) x = Σ_{c > 0} c y.

    Parameters
    ----------
    rows : (k, d) float32 factors of the items the user interacted with
    confidences : (k,) float32 summed weights (negative for dislikes)
    gram : (d, d) float64 YᵀY over all item factors of the version

    Returns
    -------
    (d,) float32 user vector.
    """
    y = rows.astype(np.float64)
    confidence = alpha * confidences.astype(np.float64)
    a = gram + regularization * np.eye(gram.shape[0]) + y.T @ (y * (np.abs(confidence) - 1.0)[:, None])
    b = y.T @ np.where(confidence > 0, confidence, 0.0)
    return np.linalg.solve(a, b).astype(np.float32)


def gram_matrix(item_factors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """YᵀY of (n_items, d) factors: (d, d) float64, stored with a version for fold-ins."""
    factors = item_factors.astype(np.float64)
    return factors.T @ factors


@dataclass(frozen=True)
class Svd:
    """Rank-k truncated SVD of a user-item matrix: singular values (k,) and right vectors (n_items, k)."""

    sigma: npt.NDArray[np.float64]
    v: npt.NDArray[np.float64]

    def leading(self, rank: int) -> Svd:
        """The rank-``rank`` truncation: the largest singular values (in whatever order they are
        held) and their vectors, which is what a rank-``rank`` SVD of the same matrix computes."""
        top = np.argsort(self.sigma)[::-1][:rank]
        return Svd(self.sigma[top], self.v[:, top])


# ARPACK (exact) up to this many items; above it a randomised subspace iteration on XᵀX
# (``gram_subspace_svd``), whose cost is a fixed number of sparse passes and QRs of an
# (items × (rank + 20)) block. ARPACK's cost at rank 400 is its Lanczos basis (items × 801), not the
# non-zeros: on a 1M-interaction user sample with 20,000 items (bench/scale.py's data) ARPACK took
# 30.2 CPU-s and the subspace iteration 4.3 (2 steps), EASE NDCG@10 0.1344 and 0.1346 on the same
# validation users. ml-latest-small (9.7k items at most, 610 users: 0.9 s) stays on ARPACK.
EXACT_SVD_MAX_ITEMS = 10_000
# Subspace steps (each multiplies by XᵀX): 1 / 2 / 3 / 5 on that sample scored NDCG@10 0.1336 /
# 0.1346 / 0.1348 / 0.1345 against ARPACK's 0.1344 (2,000 validation users).
SVD_ITERATIONS = 2
SVD_OVERSAMPLES = 20


def truncated_svd(user_items: sp.csr_matrix, factors: int, *, seed: int = 0, threads: int = 1) -> Svd:
    """Top singular values and right singular vectors of (n_users, n_items) ``user_items``."""
    from scipy.sparse.linalg import svds

    matrix = user_items.astype(np.float64).tocsr()
    rank = max(1, min(factors, min(matrix.shape) - 1))
    if matrix.shape[1] <= EXACT_SVD_MAX_ITEMS:
        _, sigma, vt = svds(matrix, k=rank, random_state=seed)
        return Svd(sigma, vt.T)
    return gram_subspace_svd(matrix, rank, iterations=SVD_ITERATIONS, seed=seed, threads=threads)


def gram_subspace_svd(
    matrix: sp.csr_matrix,
    rank: int,
    *,
    iterations: int,
    oversamples: int = SVD_OVERSAMPLES,
    seed: int = 0,
    threads: int = 1,
) -> Svd:
    """Rank-``rank`` right singular vectors and values of ``matrix`` by randomised subspace iteration
    on G = XᵀX (Halko, Martinsson & Tropp 2011, algorithm 4.4 applied to G).

    Every step is Q ← qr(Xᵀ(X Q)) on an (n_items × (rank + oversamples)) block, so no QR ever runs over
    the users (sklearn's randomized_svd orthonormalises an (n_users × l) block at every step, which at
    100,000 users cost more than the sparse products). The Rayleigh-Ritz step ends it: the eigen-
    decomposition of Qᵀ G Q = (XQ)ᵀ(XQ), whose eigenvalues are σ². Both products are sums over blocks
    of users, Σ X_bᵀ(X_b Q), computed on ``threads`` threads (scipy's sparse kernels release the GIL).

    Parameters
    ----------
    matrix : (n_users, n_items) float64 CSR
    rank : k, at most min(n_users, n_items) - 1

    Returns
    -------
    Svd with sigma (k,) float64, largest first, and v (n_items, k) float64.
    """
    width = min(rank + oversamples, matrix.shape[1])
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((matrix.shape[1], width)))[0]
    blocks = row_blocks(matrix, threads)
    with ThreadPoolExecutor(len(blocks)) as pool:

        def summed(product: Callable[..., npt.NDArray[np.float64]], q: npt.NDArray[np.float64]) -> Any:
            return np.sum(list(pool.map(functools.partial(product, q=q), blocks)), axis=0)

        for _ in range(iterations):
            q = np.linalg.qr(summed(_gram_times, q))[0]
        values, vectors = np.linalg.eigh(summed(_projected_gram, q))
    top = np.argsort(values)[::-1][:rank]
    return Svd(np.sqrt(np.maximum(values[top], 0.0)), q @ vectors[:, top])


def _gram_times(block: sp.csr_matrix, *, q: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A block of users' share of XᵀX Q."""
    return np.asarray(block.T @ (block @ q))


def _projected_gram(block: sp.csr_matrix, *, q: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A block of users' share of Qᵀ XᵀX Q."""
    sketch = np.asarray(block @ q)
    return sketch.T @ sketch


def row_blocks(matrix: sp.csr_matrix, parts: int) -> list[sp.csr_matrix]:
    """``matrix`` cut into at most ``parts`` row blocks of about equal non-zeros."""
    if parts <= 1 or matrix.shape[0] < 2:
        return [matrix]
    cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, parts + 1)[1:-1])
    edges = np.unique(np.concatenate([[0], cuts, [matrix.shape[0]]]))
    return [matrix[start:end] for start, end in itertools.pairwise(edges)]


def rows_product(matrix: sp.csr_matrix, dense: npt.NDArray[np.float64], *, threads: int = 1) -> npt.NDArray[np.float64]:
    """``matrix @ dense``, its row blocks on ``threads`` threads (the same numbers as one product)."""
    blocks = row_blocks(matrix, threads)
    if len(blocks) == 1:
        return np.asarray(matrix @ dense)
    with ThreadPoolExecutor(len(blocks)) as pool:
        return np.vstack(list(pool.map(lambda block: block @ dense, blocks)))


def fit_ease(
    user_items: sp.csr_matrix,
    *,
    factors: int,
    regularization: float,
    popularity: float = 0.0,
    svd: Svd | None = None,
    threads: int = 1,
) -> Factors:
    """Low-rank EASE (Steck 2019) as embeddings, from a truncated SVD of the user-item matrix.

    With X ≈ U Σ Vᵀ (rank k), G = XᵀX ≈ V Σ² Vᵀ and P = (G + λI)⁻¹ = (I - V diag(w) Vᵀ) / λ with
    w = σ² / (σ² + λ). EASE's weights are B = I - P diag(1/diag P); for items the user has not
    seen, x_u B is the dot product of user = (x_u V) ∘ w / λ and item_j = V_j / diag(P)_j, so the
    model serves from pgvector like any other. On ml-latest-small (k 400, λ 150) it matches full
    EASE's NDCG@10 within 0.5% at a fraction of the cost (a sparse SVD instead of inverting G).

    With ``popularity`` β ≠ 0, item_j is multiplied by (1 + n_j)^β, n_j the users with a positive
    weight for j: each user's scores of j change by the same factor, so users still fold in as
    Σ weight × item_in.

    Parameters
    ----------
    user_items : (n_users, n_items) float32 CSR confidences
    factors : rank k, clipped below min(n_users, n_items)
    regularization : λ of EASE's ridge penalty
    popularity : β, the exponent of the items' popularity factor (0: none)
    svd : a truncated SVD of ``user_items`` already computed (candidates differing in λ share one)
    threads : the user vectors' sparse product runs on this many row blocks

    Returns
    -------
    Factors with user (n_users, k), item (n_items, k) and item_in (n_items, k), all float32.
    """
    matrix = user_items.astype(np.float64).tocsr()
    svd = svd or truncated_svd(matrix, factors, threads=threads)
    sigma, v = svd.sigma, svd.v
    w = sigma**2 / (sigma**2 + regularization)
    diag_p = (1.0 - (v**2) @ w) / regularization
    item_in, item = v * (w / regularization), v / diag_p[:, None]
    if popularity:
        users = np.asarray((matrix > 0).sum(axis=0), dtype=np.float64).ravel()  # as popularity counts them
        item = item * ((1.0 + users) ** popularity)[:, None]
    return Factors(
        user=np.ascontiguousarray(rows_product(matrix, item_in, threads=threads), dtype=np.float32),
        item=np.ascontiguousarray(item, dtype=np.float32),
        item_in=np.ascontiguousarray(item_in, dtype=np.float32),
    )
