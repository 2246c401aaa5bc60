"""How a training run reads the summed weights of a (user, item) pair, against reading them as summed.

ml-latest-small's positives (ratings >= 4) with three kinds of weights: the ratings themselves (4-5:
weights that say a little), all alike (binary), and shop-like weights unrelated to taste (each pair
viewed a geometric number of times, mean 2, plus a purchase worth 8 one time in ten: repeats and
heavy event types, noise for taste). Per kind: the per-user 80/20 test split (seed 42), a run's
search (`embeddings.tuning.collaborative_search`, EASE configured) on a validation split of the
training part, the chosen parameters fitted on the whole training part as a run does
(`learner_confidences`), NDCG@10 on the test part; and the same with the reading forced to the sum
(the code before the choice). In-process, no service.

    python bench/weighting.py [--seeds 1]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MOVIELENS, machine, write_section

from embeddings import tuning
from embeddings.evaluation import holdout_split, ranking_metrics, scores_recommender
from embeddings.learners import LearnerParams, fit
from embeddings.tuning import TuningSettings, collaborative_search, learner_confidences, validation_split


def weighted_sets(seed: int) -> dict[str, sp.csr_matrix]:
    rows = [r for r in csv.DictReader((MOVIELENS / "ratings.csv").open()) if float(r["rating"]) >= 4]
    users = {u: k for k, u in enumerate(sorted({r["userId"] for r in rows}))}
    items = {m: k for k, m in enumerate(sorted({r["movieId"] for r in rows}))}
    at = ([users[r["userId"]] for r in rows], [items[r["movieId"]] for r in rows])
    shape = (len(users), len(items))
    rng = np.random.default_rng(seed)
    n = len(rows)
    shop = rng.geometric(0.5, n) + np.where(rng.random(n) < 0.1, 8.0, 0.0)
    return {
        "ratings (4-5)": sp.csr_matrix((np.array([float(r["rating"]) for r in rows], np.float32), at), shape=shape),
        "binary": sp.csr_matrix((np.ones(n, np.float32), at), shape=shape),
        "shop-like (views repeated, purchases 8)": sp.csr_matrix((shop.astype(np.float32), at), shape=shape),
    }


def served(matrix: sp.csr_matrix, *, forced_raw: bool) -> tuple[str, float, float]:
    """(the reading chosen, test NDCG@10 of the run's choice fitted on the training part, seconds)."""
    started = time.perf_counter()
    split = holdout_split(matrix, test_fraction=0.2, seed=42)
    patch = mock.patch.object(tuning, "weighting_choose", lambda *a, **k: "raw") if forced_raw else mock.MagicMock()
    with patch:
        outcome = collaborative_search(
            validation_split(split.train, seed=42),
            LearnerParams(algorithm="ease", factors=400),
            options=TuningSettings(budget_seconds=120),
        )
    factors = fit(learner_confidences(split.train, outcome.params), outcome.params)
    ndcg = ranking_metrics(scores_recommender(factors.scores, split.train), split)["ndcg@10"]
    return outcome.params.weighting, ndcg, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="of the shop-like weights")
    args = parser.parse_args()
    if not MOVIELENS.exists():
        sys.exit(f"{MOVIELENS} is not here: this benchmark reads ml-latest-small")
    lines = [
        "## Reading the summed weights (`bench/weighting.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}. " + " ".join(__doc__.split("\n\n")[1].split()),
        "",
        "| weights | reading chosen | test NDCG@10 | read as summed (before) | × before | seconds (chosen / before) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, matrix in weighted_sets(args.seed).items():
        chosen, ndcg, seconds = served(matrix, forced_raw=False)
        _, before, before_seconds = served(matrix, forced_raw=True)
        ratio = ndcg / before
        row = f"| {name} | {chosen} | {ndcg:.4f} | {before:.4f} | {ratio:.3f} | {seconds:.0f} / {before_seconds:.0f} |"
        print(row, flush=True)
        lines.append(row)
    write_section("weighting", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
