"""Cold items in the collaborative space: a ridge map from content vectors to collaborative item vectors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from embeddings.evaluation import Split, earned_choice, ranking_metrics, ranking_metrics_by_user, scores_recommender

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
) -> ContentMap:
    """Learn the map on items that have both vectors; the penalty is chosen on ``holdout`` of them.

    With ``judges`` the penalty is the one whose mapped held-out items the judges rank best (NDCG@10
    against what they liked among them): what a mapped item is for is being ranked for the users who
    will like it, and squared error spends its effort on the vector coordinates no score reads.
    Without judges, or when none of them liked a held-out item, the smallest squared error decides.

    Parameters
    ----------
    content : (n, d_content) float32 content vectors (rows aligned with ``collaborative``)
    collaborative : (n, d) float32 collaborative item vectors of the same items
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
    ndcg = _judged(judges, x[held] @ np.stack(fits), np.flatnonzero(held), seed) if judges is not None else None
    best = int(np.argmax(ndcg)) if ndcg is not None else int(np.argmin(residual))
    total = float(((y[held] - y[held].mean(axis=0)) ** 2).sum()) or 1.0
    weights = _ridge_path(x, y, [penalties[best]])[0]
    return ContentMap(
        weights.astype(np.float32),
        penalties[best],
        1.0 - residual[best] / total,
        None if ndcg is None else float(ndcg[best]),
    )


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
    items weigh less in a folded-in vector until the retrain trains those items."""

    content_map: ContentMap
    dimensions: int  # the first ``dimensions`` outputs are ``embedding``, the rest (EASE) ``fold_in``
    shrinkage: float = 1.0


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
    ``embedding`` side."""
    target = item_vectors if fold_in is None else np.hstack([item_vectors, fold_in])
    return StoredMap(content_map_fit(content, target, judges=judges, seed=seed), int(item_vectors.shape[1]))


def mapped_vectors(
    stored: StoredMap, content: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """(embedding, fold_in or None) of items placed from their content vectors."""
    predicted = stored.content_map.predict(content)
    rest = predicted[:, stored.dimensions :]
    return stored.shrinkage * predicted[:, : stored.dimensions], rest if rest.shape[1] else None


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
        # No evidence either way: the smallest factor, as the rule keeps it until a larger one is
        # earned (a dense catalogue's split has no cold item, and 1 let mapped items outscore warm ones).
        return ShrinkageChoice(SHRINKAGES[0], None, len(cold_rows), cold_test)
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
    return float(earned_choice({factor: per_user[factor] for factor in sorted(per_user)}))


def map_bytes(stored: StoredMap) -> bytes:
    buffer = io.BytesIO()
    m = stored.content_map
    ndcg = np.nan if m.ndcg is None else m.ndcg
    np.savez(
        buffer,
        weights=m.weights,
        penalty=m.penalty,
        r2=m.r2,
        ndcg=ndcg,
        dimensions=stored.dimensions,
        shrinkage=stored.shrinkage,
    )
    return buffer.getvalue()


def map_load(data: bytes) -> StoredMap:
    with np.load(io.BytesIO(data)) as arrays:
        ndcg = float(arrays["ndcg"]) if "ndcg" in arrays.files else np.nan  # maps stored before judges
        content_map = ContentMap(
            arrays["weights"], float(arrays["penalty"]), float(arrays["r2"]), None if np.isnan(ndcg) else ndcg
        )
        shrinkage = float(arrays["shrinkage"]) if "shrinkage" in arrays.files else 1.0  # maps stored before it
        return StoredMap(content_map, int(arrays["dimensions"]), shrinkage)
