"""Cold items in the collaborative space: a ridge map from content vectors to collaborative item vectors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from embeddings.evaluation import Split, ranking_metrics, ranking_metrics_by_user, scores_recommender

# Candidate ridge penalties, as multiples of the mean squared singular value of the content matrix
# (so the grid means the same for any encoder's scale and dimension); the best is picked on held-out items.
RELATIVE_PENALTIES = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
# Users whose ranking of the held-out items judges each penalty (a seeded sample of those with one).
JUDGE_USERS = 2_000
# Factors on mapped vectors' scores, chosen by how a run's validation users rank the whole catalogue
# with the items that were cold in that split placed at each (``shrinkage_choose``). A map regresses
# towards the average item, so a placed item can outscore warm ones it should not; every factor here
# still places it (its order among other mapped items, and the items similar to it, do not change).
SHRINKAGES = (0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Judges:
    """The users who judge a map by how they would rank held-out items with it.

    vectors : (m, d) float32 user vectors; a user's score of an item is ``vectors[u] @ item[:d]``
    liked : (m, n) sparse, the users' positive interactions with the items being mapped (columns
        aligned with their rows)
    """

    vectors: npt.NDArray[np.float32]
    liked: sp.csr_matrix


@dataclass(frozen=True)
class ContentMap:
    """``predict(content) = [content, 1] @ weights``: a collaborative item vector from a content one.

    weights : (d_content + 1, d_collaborative) float32, the last row is the bias
    penalty : the ridge penalty chosen on held-out items; r2 : their coefficient of determination;
    ndcg : NDCG@10 of the judges' rankings of the held-out items (None: chosen by squared error)
    """

    weights: npt.NDArray[np.float32]
    penalty: float
    r2: float
    ndcg: float | None = None

    def predict(self, content: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(n, d_content) float32 → (n, d_collaborative) float32."""
        return np.asarray(_with_bias(content) @ self.weights, dtype=np.float32)


def _with_bias(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])


def _ridge_path(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], penalties: list[float]
) -> list[npt.NDArray[np.float64]]:
    """Ridge solutions for every penalty from one SVD of ``x`` (the bias column is penalised too,
    which at these penalties and a centred target changes nothing measurable)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return [vt.T @ ((s / (s**2 + penalty))[:, None] * uty) for penalty in penalties]


def content_map_fit(
    content: npt.NDArray[np.float32],
    collaborative: npt.NDArray[np.float32],
    *,
    judges: Judges | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    log_norms: npt.NDArray[np.float64] | None = None,
) -> ContentMap:
    """Learn the map on items that have both vectors; the penalty is chosen on ``holdout`` of them.

    With ``judges`` the penalty is the one whose mapped held-out items the judges rank best (NDCG@10
    against what they liked among them): what a mapped item is for is being ranked for the users who
    will like it, and squared error spends its effort on the vector coordinates no score reads.
    Without judges, or when none of them liked a held-out item, the smallest squared error decides.

    With ``log_norms`` the columns the judges read are the items' unit directions, and the judges
    rank each held-out item at its predicted direction, normalised, times the exponential of its
    log norm as predicted by a ridge fitted on the other items (``stored_map_fit``'s second form).

    Parameters
    ----------
    content : (n, d_content) float32 content vectors (rows aligned with ``collaborative``)
    collaborative : (n, d) float32 collaborative item vectors of the same items
    log_norms : (n,) the log of each item's norm (with directions in ``collaborative``)
    """
    if len(content) != len(collaborative) or len(content) < 10:
        raise ValueError("need at least 10 items with both a content and a collaborative vector")
    x, y = _with_bias(content), np.asarray(collaborative, dtype=np.float64)
    scale = float(np.mean(np.linalg.norm(x, axis=1) ** 2))  # ≈ mean squared singular value × rank / n
    penalties = [r * scale * len(x) / x.shape[1] for r in RELATIVE_PENALTIES]
    held = np.random.default_rng(seed).random(len(x)) < holdout
    if held.sum() < 2 or (~held).sum() < 2:
        held = np.zeros(len(x), bool)
        held[:: max(2, len(x) // 5)] = True
    fits = _ridge_path(x[~held], y[~held], penalties)
    residual = [float(((x[held] @ w - y[held]) ** 2).sum()) for w in fits]
    ndcg = None
    if judges is not None:
        predicted = x[held] @ np.stack(fits)
        if log_norms is not None:
            d = judges.vectors.shape[1]
            norms = np.exp(_least_squares_predict(x, np.asarray(log_norms, np.float64)[:, None], held, penalties))
            predicted[:, :, :d] = _unit(predicted[:, :, :d]) * norms[None, :, :]
        ndcg = _judged(judges, predicted, np.flatnonzero(held), seed)
    best = int(np.argmax(ndcg)) if ndcg is not None else int(np.argmin(residual))
    total = float(((y[held] - y[held].mean(axis=0)) ** 2).sum()) or 1.0
    weights = _ridge_path(x, y, [penalties[best]])[0]
    return ContentMap(
        weights.astype(np.float32),
        penalties[best],
        1.0 - residual[best] / total,
        None if ndcg is None else float(ndcg[best]),
    )


def _least_squares_predict(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], held: npt.NDArray[np.bool_], penalties: list[float]
) -> npt.NDArray[np.float64]:
    """The held rows' ``y`` as predicted by a ridge fitted on the other rows, its penalty the one of
    least squared error on the held rows."""
    fits = _ridge_path(x[~held], y[~held], penalties)
    predictions = [x[held] @ w for w in fits]
    return predictions[int(np.argmin([float(((p - y[held]) ** 2).sum()) for p in predictions]))]


def _unit(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Rows (along the last axis) scaled to length 1; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors, np.float64) / np.where(norms > 0, norms, 1.0)


def _judged(
    judges: Judges, predicted: npt.NDArray[np.float64], held: npt.NDArray[np.int64], seed: int
) -> npt.NDArray[np.float64] | None:
    """NDCG@10 per candidate map of the judges ranking the held-out items (``predicted``: one
    (len(held), d) block per penalty); None when no judge liked any of them."""
    liked = judges.liked.tocsc()[:, held].tocsr()
    if not liked.nnz:
        return None
    d = judges.vectors.shape[1]
    nothing_seen = sp.csr_matrix(liked.shape, dtype=np.float32)
    split = Split(nothing_seen, liked)
    users = np.asarray(judges.vectors, dtype=np.float32)

    def ndcg(items: npt.NDArray[np.float64]) -> float:
        scores = scores_recommender(lambda rows: users[rows] @ items[:, :d].T.astype(np.float32), nothing_seen)
        return ranking_metrics(scores, split, max_users=JUDGE_USERS, seed=seed)["ndcg@10"]

    return np.array([ndcg(block) for block in predicted])


@dataclass(frozen=True)
class StoredMap:
    """A fitted map and how its output splits into the item table's columns; ``shrinkage`` scales the
    ``embedding`` part (what users' scores read), EASE's ``fold_in`` part is placed as predicted.
    ALS/BPR/LMF fold users in against ``embedding``, so there a user's interactions with mapped
    items weigh less in a folded-in vector until the retrain trains those items.

    With ``norm_map`` the ``embedding`` outputs are a direction, normalised when placed, and
    ``norm_map`` predicts the log of the vector's length (``stored_map_fit``)."""

    content_map: ContentMap
    dimensions: int  # the first ``dimensions`` outputs are ``embedding``, the rest (EASE) ``fold_in``
    shrinkage: float = 1.0
    norm_map: ContentMap | None = None


def stored_map_fit(
    content: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None,
    *,
    judges: Judges | None = None,
    seed: int = 0,
) -> StoredMap:
    """The map a run stores: content (n, d_c) → the item table's columns, ``embedding`` (n, d) and,
    for EASE, ``fold_in`` (n, d) side by side (rows of all three aligned); ``judges`` score the
    ``embedding`` side.

    With judges, two forms are fitted and the one they rank held-out items better with is kept: a
    ridge onto the vectors as they are, and one onto their directions beside a ridge onto the log
    of their lengths. Item norms can span orders of magnitude (an EASE item's is 1 / diag(P), larger
    the better the kept components explain it, and ALS's grow with popularity), and squared error
    on raw vectors is then spent on the longest few; the second form weighs every item alike and
    predicts length (mostly popularity) on its own scale. On ml-latest-small's cold-item benchmark
    the judges' choice followed the held-out items: the second form ranked cold movies better with
    TF-IDF vectors (EASE 400-d: NDCG@10 0.250 against 0.239) and worse with MiniLM's (0.228 against
    0.248), and the judges' held-out NDCG@10 said the same both times (BENCHMARKS.md, cold-items).
    """
    d = int(item_vectors.shape[1])
    extra = [] if fold_in is None else [np.asarray(fold_in, np.float32)]
    vector = StoredMap(content_map_fit(content, np.hstack([item_vectors, *extra]), judges=judges, seed=seed), d)
    if judges is None or vector.content_map.ndcg is None:
        return vector
    norms = np.linalg.norm(np.asarray(item_vectors, np.float64), axis=1)
    if not (norms > 0).all():  # a zero vector has no direction: the first form
        return vector
    directions = (item_vectors / norms[:, None]).astype(np.float32)
    log_norms = np.log(norms)
    split = content_map_fit(content, np.hstack([directions, *extra]), judges=judges, seed=seed, log_norms=log_norms)
    if split.ndcg is None or split.ndcg <= vector.content_map.ndcg:
        return vector
    return StoredMap(split, d, norm_map=content_map_fit(content, log_norms[:, None], seed=seed))


def mapped_vectors(
    stored: StoredMap, content: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """(embedding, fold_in or None) of items placed from their content vectors."""
    predicted = stored.content_map.predict(content)
    rest = predicted[:, stored.dimensions :]
    embedding = predicted[:, : stored.dimensions]
    if stored.norm_map is not None:
        embedding = (_unit(embedding) * np.exp(stored.norm_map.predict(content).astype(np.float64))).astype(np.float32)
    return stored.shrinkage * embedding, rest if rest.shape[1] else None


@dataclass(frozen=True)
class ShrinkageChoice:
    """The chosen factor and the validation NDCG@10 at each one tried (None: the split had no
    evidence, the factor stays 1), with the counts it was judged on."""

    shrinkage: float
    ndcg: dict[float, float] | None
    cold_items: int
    cold_test_entries: int


def shrinkage_choose(
    split: Split,
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None,
    content: npt.NDArray[np.float32],
    content_columns: npt.NDArray[np.int64],
    *,
    max_users: int | None = None,
    max_fit: int = 50_000,
    seed: int = 0,
) -> ShrinkageChoice:
    """The factor on mapped scores under which the split's users rank the whole catalogue best.

    The model (``user_vectors``, ``item_vectors``: fitted on ``split.train``) has no interactions of
    the items that had none in ``split.train``; those with a content vector are placed from a map
    fitted on the others, exactly as a run places new items, at each of ``SHRINKAGES``, and every
    user ranks warm and placed items together (train items excluded) against ``split.test``. The
    judgement is on full rankings, so a placed item that outscores warm items it should not costs
    what it costs when served. Items without a content vector and no train interaction rank nowhere.

    Parameters
    ----------
    content : (len(content_columns), d_content) float32, the content vectors of those columns
    """
    n_items = split.train.shape[1]
    seen = np.diff(split.train.tocsc().indptr) > 0
    placed = np.zeros(n_items, bool)
    placed[content_columns] = True
    warm_rows, cold_rows = np.flatnonzero(seen[content_columns]), np.flatnonzero(~seen[content_columns])
    cold_columns = content_columns[cold_rows]
    cold_test = int(np.isin(split.test.indices, cold_columns).sum())
    if not cold_test or len(warm_rows) < 10:
        return ShrinkageChoice(1.0, None, len(cold_rows), cold_test)
    if len(warm_rows) > max_fit:  # as a run fits its map (cold_placement.MAX_FIT_ITEMS)
        warm_rows = np.sort(np.random.default_rng(seed).choice(warm_rows, max_fit, replace=False))
    warm_columns = content_columns[warm_rows]
    judges = Judges(user_vectors, (split.train[:, warm_columns] > 0).astype(np.float32).tocsr())
    stored = stored_map_fit(
        content[warm_rows],
        item_vectors[warm_columns],
        None if fold_in is None else fold_in[warm_columns],
        judges=judges,
        seed=seed,
    )
    mapped, _ = mapped_vectors(stored, content[cold_rows])
    unranked = ~seen & ~placed
    users = np.asarray(user_vectors, dtype=np.float32)
    per_user: dict[float, npt.NDArray[np.float64]] = {}
    for factor in SHRINKAGES:
        items = np.array(item_vectors, dtype=np.float32)
        items[cold_columns] = factor * mapped

        def score(rows: npt.NDArray[np.int64], items: npt.NDArray[np.float32] = items) -> npt.NDArray[np.float32]:
            scores = users[rows] @ items.T
            scores[:, unranked] = -np.inf
            return scores

        recommend = scores_recommender(score, split.train)
        per_user[factor] = ranking_metrics_by_user(recommend, split, max_users=max_users, seed=seed).ndcg
    ndcg = {factor: float(values.mean()) for factor, values in per_user.items()}
    return ShrinkageChoice(_earned(per_user), ndcg, len(cold_rows), cold_test)


def _earned(per_user: dict[float, npt.NDArray[np.float64]]) -> float:
    """From the smallest factor up, a larger one replaces the one chosen so far only when its mean
    per-user NDCG is higher by more than twice the standard error of the paired differences
    (z > 2): a placed item must earn the warm items it pushes out. On ml-latest-small's validation
    splits the factors changed the top 10 of only 1-7 of ~600 users, by 0.0001-0.0010 of mean
    NDCG@10, and the test split's NDCG@10 moved either way (-0.5% to +0.2%); a one-user change is
    exactly one standard error, so a weaker rule followed single users."""
    factors = sorted(per_user)
    chosen = factors[0]
    for factor in factors[1:]:
        difference = per_user[factor] - per_user[chosen]
        error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else np.inf
        if difference.mean() > 2 * error:
            chosen = factor
    return chosen


def map_bytes(stored: StoredMap) -> bytes:
    buffer = io.BytesIO()
    m = stored.content_map
    ndcg = np.nan if m.ndcg is None else m.ndcg
    norm = {}
    if stored.norm_map is not None:
        norm = {"norm_weights": stored.norm_map.weights, "norm_penalty": stored.norm_map.penalty}
        norm["norm_r2"] = stored.norm_map.r2
    np.savez(
        buffer,
        weights=m.weights,
        penalty=m.penalty,
        r2=m.r2,
        ndcg=ndcg,
        dimensions=stored.dimensions,
        shrinkage=stored.shrinkage,
        **norm,
    )
    return buffer.getvalue()


def map_load(data: bytes) -> StoredMap:
    with np.load(io.BytesIO(data)) as arrays:
        ndcg = float(arrays["ndcg"]) if "ndcg" in arrays.files else np.nan  # maps stored before judges
        content_map = ContentMap(
            arrays["weights"], float(arrays["penalty"]), float(arrays["r2"]), None if np.isnan(ndcg) else ndcg
        )
        shrinkage = float(arrays["shrinkage"]) if "shrinkage" in arrays.files else 1.0  # maps stored before it
        norm_map = None
        if "norm_weights" in arrays.files:  # the direction × length form (maps stored before it: none)
            norm_map = ContentMap(arrays["norm_weights"], float(arrays["norm_penalty"]), float(arrays["norm_r2"]))
        return StoredMap(content_map, int(arrays["dimensions"]), shrinkage, norm_map)
