"""The run's selection and final fit in process, judged on a holdout: a per-user 80/20 split (seed 42), the
run's `_select` (search, restating, metrics) on the 80%, the winner fitted on all of it as the run's final fit,
NDCG@10 on the 20% (every test user of ml-latest-small; 10,000 of the generated set). No database; prints JSON.

    python bench/train_holdout.py ml          # ml-latest-small, ratings >= 4 as weights (../shared/data)
    python bench/train_holdout.py generated   # bench/scale.py's distribution: 10M events, 100k users, 20k items

Run it from another checkout (``git archive <commit> | tar -x -C DIR``) for the same figures of that code.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
MOVIELENS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-latest-small"


def movielens() -> sp.csr_matrix:
    rows = [r for r in csv.DictReader((MOVIELENS / "ratings.csv").open()) if float(r["rating"]) >= 4]
    users = {u: k for k, u in enumerate(sorted({r["userId"] for r in rows}, key=int))}
    items = {m: k for k, m in enumerate(sorted({r["movieId"] for r in rows}, key=int))}
    weights = np.array([float(r["rating"]) for r in rows], np.float32)
    cells = ([users[r["userId"]] for r in rows], [items[r["movieId"]] for r in rows])
    return sp.csr_matrix((weights, cells), shape=(len(users), len(items)))


def generated(n: int = 10_000_000, users: int = 100_000, items: int = 20_000, seed: int = 11) -> sp.csr_matrix:
    """bench/scale.py's distribution (skewed users, power-law items), summed into distinct pairs."""
    rng = np.random.default_rng(seed)
    user = (users * rng.random(n) ** 1.5).astype(np.int32)
    item = (items * rng.random(n) ** 3).astype(np.int32)
    matrix = sp.csr_matrix((np.ones(n, np.float32), (user, item)), shape=(users, items))
    matrix.sum_duplicates()
    return matrix


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    os.environ.setdefault("RECSYS_INSECURE_DEV_KEY", "true")
    import django

    django.setup()
    from embeddings import services
    from embeddings.evaluation import holdout_split, popularity_recommender, ranking_metrics, scores_recommender
    from embeddings.learners import fit

    name = sys.argv[1] if len(sys.argv) > 1 else "ml"
    split = holdout_split(movielens() if name == "ml" else generated(), test_fraction=0.2, seed=42)
    users = None if name == "ml" else 10_000
    cpu, wall = time.process_time(), time.perf_counter()
    selection = services._select(split.train, services.learner_params_from_settings())
    select_cpu = time.process_time() - cpu
    threads = {"threads": services.training_threads()} if hasattr(services, "training_threads") else {}
    factors = fit(services._confidences(split.train, selection.params), selection.params, **threads)
    held = ranking_metrics(scores_recommender(factors.scores, split.train), split, max_users=users)
    popular = ranking_metrics(popularity_recommender(split.train), split, max_users=users)
    report = {
        "data": name,
        "chosen": selection.params.as_dict(),
        "candidates": len(selection.tried),
        "version_ndcg@10": selection.metrics["ndcg@10"],
        "holdout_ndcg@10": held["ndcg@10"],
        "holdout_recall@10": held["recall@10"],
        "popularity_holdout_ndcg@10": popular["ndcg@10"],
        "select_cpu": round(select_cpu, 1),
        "final_fit_cpu": round(time.process_time() - cpu - select_cpu, 1),
        "wall": round(time.perf_counter() - wall, 1),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
