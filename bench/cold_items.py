"""Cold items placed in the collaborative space, on MovieLens (ml-latest-small), in-process.

10% of the movies are held out of training (the same ones as bench/content.py's cold start). A
collaborative model is trained on the rest as a run would (the tuning search, then a fit), a ridge
map from content vectors to collaborative item vectors is learnt on the warm movies
(embeddings/cold_items.py, fitted as a training run stores it: embeddings/cold_placement.py), and
the held-out movies get mapped vectors. Each user who liked some
of them ranks the held-out movies by their collaborative user vector · mapped vector, scored by
NDCG@10; beside it, the content profile of bench/content.py, popularity as an oracle (counts of
the held-out movies over the other users) and random, on the same users and candidates.

    python -m recsys.run exec -- python bench/cold_items.py
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MOVIELENS, machine, write_section
from content import cold_users, encode, movie_texts, ndcg_at_10, ratings

from embeddings.cold_items import Judges, mapped_vectors, stored_map_fit
from embeddings.learners import Factors, LearnerParams, fit
from embeddings.tuning import TuningSettings, collaborative_search, learner_confidences, validation_split

SEED = 42
ENCODERS = ("tfidf-svd", "minilm")


def collaborative(warm: sp.csr_matrix) -> tuple[Factors, str]:
    """The factors of the model a training run would choose on the warm matrix."""
    outcome = collaborative_search(
        validation_split(warm, seed=SEED), LearnerParams(), options=TuningSettings(budget_seconds=60, seed=SEED)
    )
    factors = fit(learner_confidences(warm, outcome.params), outcome.params)
    return factors, f"{outcome.params.algorithm}, {factors.dimensions}-d"


def main() -> None:
    if not (MOVIELENS / "ratings.csv").exists():
        sys.exit(f"{MOVIELENS} not found")
    ids, texts = movie_texts()
    matrix, stamps = ratings(ids)
    rng = np.random.default_rng(SEED)
    n_items = matrix.shape[1]
    cold = np.sort(rng.choice(n_items, size=n_items // 10, replace=False))  # as bench/content.py
    is_cold = np.zeros(n_items, bool)
    is_cold[cold] = True
    warm_columns = np.flatnonzero(~is_cold)
    warm = matrix[:, warm_columns].tocsr()
    started = time.perf_counter()
    factors, model = collaborative(warm)
    user_vectors, item_vectors = factors.user, factors.item
    fold_in = factors.item_in
    train_s = time.perf_counter() - started
    rated = np.asarray((warm > 0).sum(axis=0)).ravel() > 0  # items the model has seen a positive of
    # As a run does: the users judge each penalty by ranking held-out warm items (no cold item).
    judges = Judges(user_vectors, (warm[:, np.flatnonzero(rated)] > 0).astype(np.float32).tocsr())
    scores: dict[str, list[float]] = defaultdict(list)
    maps = {}
    for name in ENCODERS:
        vectors, _ = encode(name, texts)
        # The product path: the map a training run stores (embeddings.cold_placement), targets the
        # item table's columns (EASE's fold-in side too); user scores read the embedding column.
        stored = stored_map_fit(
            vectors[warm_columns][rated],
            item_vectors[rated],
            fold_in[rated] if fold_in is not None else None,
            judges=judges,
            seed=SEED,
        )
        maps[name] = stored.content_map
        mapped, _ = mapped_vectors(stored, vectors[cold])
        profile_scores(scores, name, vectors, mapped, matrix, stamps, cold, is_cold, user_vectors)
    baselines(scores, matrix, stamps, cold, is_cold, rng)
    report({k: float(np.mean(v)) for k, v in scores.items()}, len(scores["random"]), model, train_s, maps, len(cold))


def profile_scores(scores, name, vectors, mapped, matrix, stamps, cold, is_cold, user_vectors) -> None:  # type: ignore[no-untyped-def]
    half_life = 30 * 86_400.0
    for user in cold_users(matrix, stamps, cold, is_cold):
        items, when, warm, relevant = user.items, user.when, user.warm, user.relevant
        weights = np.exp2(-(when[warm].max() - when[warm]) / half_life)
        profile = (weights[:, None] * vectors[items[warm]]).sum(axis=0)
        scores[f"content profile ({name})"].append(ndcg_at_10(np.argsort(-(vectors[cold] @ profile)), relevant))
        scores[f"mapped ({name})"].append(ndcg_at_10(np.argsort(-(mapped @ user_vectors[user.row])), relevant))


def baselines(scores, matrix, stamps, cold, is_cold, rng) -> None:  # type: ignore[no-untyped-def]
    cold_counts = np.asarray(matrix[:, cold].sum(axis=0)).ravel()
    for user in cold_users(matrix, stamps, cold, is_cold):
        own = np.isin(cold, user.items).astype(float)  # leave this user's own ratings out of popularity
        scores["popularity (oracle)"].append(ndcg_at_10(np.argsort(-(cold_counts - own), kind="stable"), user.relevant))
        scores["random"].append(ndcg_at_10(rng.permutation(len(cold)), user.relevant))


def report(results, users, model, train_s, maps, n_cold) -> None:  # type: ignore[no-untyped-def]
    lines = [
        "## Cold items in the collaborative space (`bench/cold_items.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; ml-latest-small, {n_cold} movies (10%) held out of "
        f"training, {users} users who liked some of them rank all held-out movies. Collaborative model: {model} "
        f"(tuning search and fit {train_s:.0f} s). Ridge map per encoder, its penalty chosen by how the users rank "
        "10% of the warm items held out of the map's fit (NDCG@10, as a training run chooses it): "
        + ", ".join(
            f"{k} penalty {m.penalty:.3g}, held-out NDCG@10 {m.ndcg:.3f}, R² {m.r2:.2f}" for k, m in maps.items()
        )
        + ".",
        "",
        "| ranking of held-out movies | NDCG@10 |",
        "|---|---:|",
        *[f"| {name} | {value:.3f} |" for name, value in sorted(results.items(), key=lambda kv: -kv[1])],
        "",
    ]
    for encoder in ENCODERS:
        mapped, profile = results[f"mapped ({encoder})"], results[f"content profile ({encoder})"]
        lines.append(f"- {encoder}: mapped vectors **{mapped / profile:.2f}×** the content profile (target ≥ 2×).")
    write_section("cold-items", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
