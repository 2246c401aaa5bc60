"""Tuning on a user sample against tuning on everything, and whether the parameters transfer.

The run's search (`embeddings.tuning.collaborative_search`) on a validation split of the training
part, once on everything (sample off) and once on a user sample (`--sample` interactions); each
winner is fitted on the whole training part as a run fits it and scored on the held-out 20%
(NDCG@10 over every test user: what serving would give, less the ANN). Then grids on the same
validation split check the restating of regularisation from a sample to the whole: EASE's λ by
the ratio of the Gram traces; ALS's kept as found, against dividing it by √(fraction of
interactions). In-process, no service.

    nice -n 19 .venv/bin/python bench/tuning_sample.py [--users 30000] [--items 5000] [--sample 150000]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MOVIELENS, machine, write_section

from embeddings.evaluation import Split, holdout_split, ranking_metrics, scores_recommender
from embeddings.learners import LearnerParams, fit
from embeddings.tuning import (
    TuningSettings,
    collaborative_search,
    gram_diagonal_mean,
    learner_confidences,
    user_sample,
    validation_split,
    weight_scale,
)

SEED = 42
CONFIGURED = LearnerParams()  # the settings' defaults: ALS, 64 factors, regularization 0.05, 15 iterations


def latent_set(users: int, items: int, *, dims: int = 16, mean_items: float = 40.0, seed: int = 3) -> sp.csr_matrix:
    """Users pick items with probability ∝ popularity (Pareto) × exp(1.5 uᵀv / √dims), sampled without
    replacement (Gumbel top-k), activity log-normal with mean ``mean_items``; weights 1-5 (rating-like)."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((users, dims)), rng.standard_normal((items, dims))
    log_popularity = np.log(rng.pareto(1.2, items) + 1.0)
    counts = np.clip(rng.lognormal(math.log(mean_items) - 0.5, 1.0, users).astype(int), 2, items // 4)
    rows, cols = [], []
    for start in range(0, users, 2000):
        logits = log_popularity + 1.5 * (u[start : start + 2000] @ v.T) / math.sqrt(dims)
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1)
        for offset, ranked in enumerate(order):
            n = counts[start + offset]
            rows.append(np.full(n, start + offset))
            cols.append(ranked[:n])
    row, col = np.concatenate(rows), np.concatenate(cols)
    weights = rng.integers(1, 6, len(row)).astype(np.float32)
    return sp.csr_matrix((weights, (row, col)), shape=(users, items))


def movielens() -> sp.csr_matrix:
    rows = [r for r in csv.DictReader((MOVIELENS / "ratings.csv").open()) if float(r["rating"]) >= 4]
    users = {u: k for k, u in enumerate(sorted({r["userId"] for r in rows}, key=int))}
    items = {m: k for k, m in enumerate(sorted({r["movieId"] for r in rows}, key=int))}
    keys = np.array([(users[r["userId"]], items[r["movieId"]]) for r in rows])
    weights = np.array([float(r["rating"]) for r in rows], np.float32)
    return sp.csr_matrix((weights, (keys[:, 0], keys[:, 1])), shape=(len(users), len(items)))


def tuned(split: Split, options: TuningSettings) -> dict[str, Any]:
    """The run's path: search on a validation split of train, fit the winner on train, score on test."""
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = collaborative_search(validation_split(split.train, seed=SEED), CONFIGURED, options=options)
    search = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    factors = fit(learner_confidences(split.train, outcome.params), outcome.params)
    served = ranking_metrics(scores_recommender(factors.scores, split.train), split)
    return {"outcome": outcome, "search": search, "ndcg": served["ndcg@10"], "users": served["users"]}


def ndcg(split: Split, params: LearnerParams, svd_cache: dict[int, Any] | None = None) -> float:
    factors = fit(split.train, params, svd_cache=svd_cache)
    recommend = scores_recommender(factors.scores, split.train)
    return ranking_metrics(recommend, split, max_users=2000, seed=SEED)["ndcg@10"]


def transfer_grids(train: sp.csr_matrix, cap: int) -> dict[str, Any]:
    """Best EASE λ and ALS regularisation on a validation split and on its user sample, on grids."""
    scale = weight_scale(train)
    whole = validation_split(train, seed=SEED)
    whole = Split((whole.train / scale).tocsr(), whole.test)
    sample = user_sample(whole, cap, seed=SEED)
    trace = float(whole.train.data @ whole.train.data) / float(sample.train.data @ sample.train.data)
    fraction = sample.train.nnz / whole.train.nnz
    figures: dict[str, Any] = {"fraction": fraction, "trace_ratio": trace}
    relative = np.geomspace(1.0, 1000.0, 7)
    caches: dict[str, dict[int, Any]] = {"whole": {}, "sample": {}}
    for name, split in (("whole", whole), ("sample", sample)):
        unit = gram_diagonal_mean(split.train)
        ease = {
            r: ndcg(split, LearnerParams("ease", factors=200, regularization=r * unit), caches[name]) for r in relative
        }
        best = max(ease, key=ease.__getitem__)
        figures[f"ease_{name}"] = {"grid": ease, "best_relative": best, "best_absolute": best * unit}
    restated = figures["ease_sample"]["best_absolute"] * trace
    figures["ease_restated"] = (
        restated,
        ndcg(whole, LearnerParams("ease", factors=200, regularization=restated), caches["whole"]),
    )
    base = LearnerParams("als", factors=64, iterations=10, alpha=10.0)
    for name, split in (("whole", whole), ("sample", sample)):
        als = {r: ndcg(split, replace(base, regularization=float(r))) for r in np.geomspace(0.01, 1000.0, 6)}
        figures[f"als_{name}"] = {"grid": als, "best": max(als, key=als.__getitem__)}
    restated = figures["als_sample"]["best"] / math.sqrt(fraction)
    figures["als_restated"] = (restated, ndcg(whole, replace(base, regularization=float(restated))))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--sample", type=int, default=150_000, help="sample cap on the generated set (interactions)")
    parser.add_argument("--ml-sample", type=int, default=30_000, help="sample cap on ml-latest-small")
    parser.add_argument("--budget", type=float, default=600.0, help="search budget (s): large, so both searches end")
    parser.add_argument("--skip-grids", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    generated = latent_set(args.users, args.items)
    sets = [("generated (latent)", generated, args.sample)]
    if (MOVIELENS / "ratings.csv").exists():
        sets.append(("ml-latest-small ratings ≥ 4", movielens(), args.ml_sample))
    rows, details = [], []
    for name, matrix, cap in sets:
        split = holdout_split(matrix, test_fraction=0.2, seed=SEED)
        options = TuningSettings(budget_seconds=args.budget, seed=SEED)
        full = tuned(split, replace(options, sample_interactions=0))
        sampled = tuned(split, replace(options, sample_interactions=cap))
        for label, r in (("everything", full), (f"sample ≤ {cap:,}", sampled)):
            o = r["outcome"]
            rows.append(
                f"| {name} ({matrix.shape[0]:,} users, {matrix.shape[1]:,} items, {matrix.nnz:,} interactions) "
                f"| {label} | {o.sample.get('users', 0):,.0f} users, {o.sample.get('interactions', 0):,.0f} "
                f"| {r['search']['wall']:.0f} s / {r['search']['cpu']:.0f} s | {len(o.tried)} (+{o.skipped} skipped) "
                f"| {o.params.algorithm} {o.params.factors}-d, λ {o.params.regularization:.4g} "
                f"| **{r['ndcg']:.4f}** |"
            )
        details.append(f"{name}: sample/everything served NDCG@10 = **{sampled['ndcg'] / full['ndcg']:.3f}×**.")
        print("\n".join(rows[-2:]), flush=True)
    grid_lines: list[str] = []
    if not args.skip_grids:
        g = transfer_grids(holdout_split(generated, test_fraction=0.2, seed=SEED).train, args.sample)
        ew, es = g["ease_whole"], g["ease_sample"]
        aw, asm = g["als_whole"], g["als_sample"]
        (ease_at, ease_ndcg), (als_at, als_ndcg) = g["ease_restated"], g["als_restated"]
        grid_lines = [
            f"Transfer grids (generated set, validation split of train; sample = {g['fraction']:.1%} of the "
            f"interactions, trace ratio {g['trace_ratio']:.2f}; NDCG@10 over 2,000 validation users):",
            "",
            f"- EASE (rank 200), λ relative to each matrix's mean diag(XᵀX), 7 points 1-1000: best on everything "
            f"λ = {ew['best_absolute']:.4g} (relative {ew['best_relative']:.3g}, NDCG {max(ew['grid'].values()):.4f}); "
            f"best on the sample {es['best_absolute']:.4g} (relative {es['best_relative']:.3g}), restated × trace "
            f"ratio = {ease_at:.4g}, which scores **{ease_ndcg:.4f}** on everything.",
            f"- ALS (64 factors, 10 iterations, alpha 10 on normalised weights), regularization 0.01-1000: best on "
            f"everything {aw['best']:.4g} (NDCG {max(aw['grid'].values()):.4f}); on the sample {asm['best']:.4g}, "
            f"restated ÷ √fraction = {als_at:.4g}, which scores **{als_ndcg:.4f}** on everything (unrestated: "
            f"{aw['grid'][asm['best']]:.4f}).",
            "",
            "| regularization (ALS) | " + " | ".join(f"{r:.3g}" for r in aw["grid"]) + " |",
            "|---|" + "---:|" * len(aw["grid"]),
            "| everything | " + " | ".join(f"{v:.4f}" for v in aw["grid"].values()) + " |",
            "| sample | " + " | ".join(f"{v:.4f}" for v in asm["grid"].values()) + " |",
            "",
            "| λ / mean diag(XᵀX) (EASE) | " + " | ".join(f"{r:.3g}" for r in ew["grid"]) + " |",
            "|---|" + "---:|" * len(ew["grid"]),
            "| everything | " + " | ".join(f"{v:.4f}" for v in ew["grid"].values()) + " |",
            "| sample | " + " | ".join(f"{v:.4f}" for v in es["grid"].values()) + " |",
        ]
    lines = [
        "## Tuning on a user sample (`bench/tuning_sample.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (load average {os.getloadavg()[0]:.1f}: wall "
        "times are noise, CPU seconds are this process's). Per data set: 80/20 per-user split (seed 42); the run's "
        "search (`collaborative_search`, configured ALS defaults, EASE rank 400, budget "
        f"{args.budget:.0f} s so that both searches end on their own) on a validation split of the train part, on "
        "everything or on a user sample; each winner fitted on the whole train part as a run fits it, NDCG@10 over "
        "every test user.",
        "",
        "| data set | tuned on | search saw | search wall / CPU | candidates | winner | NDCG@10 (test) |",
        "|---|---|---|---:|---:|---|---:|",
        *rows,
        "",
        *details,
        "",
        *grid_lines,
    ]
    write_section("tuning-sample", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
