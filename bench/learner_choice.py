"""Which learner a training run serves, over several validation seeds, against the held-out test.

A run's search (`embeddings.tuning.collaborative_search`, the product's defaults: ALS configured,
EASE searched beside it) on a validation split of the training part, one search per validation
seed; the chosen learner is fitted on the whole training part and scored on the held-out 20%
(NDCG@10 over every test user, seen items excluded), and so are EASE's and ALS's best candidates of
the same search. The choice's rule (`serving_choose`: ALS replaces EASE only when it leads by more
than `switch_margin` standard errors) is compared with the best validation score (margin 0). The
seed of the validation split should not decide the product's quality. In-process, no service.

    python bench/learner_choice.py [--movielens DIR ...] [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import MOVIELENS, machine, write_section
from quality import generated_set, movielens_sets

from embeddings.evaluation import holdout_split, ranking_metrics, scores_recommender
from embeddings.learners import LearnerParams, fit
from embeddings.tuning import (
    Candidate,
    TuningSettings,
    _Transfer,
    collaborative_search,
    paired_standard_error,
    serving_choose,
    validation_split,
    weight_scale,
)

SEED = 42
CONFIGURED = LearnerParams()  # the settings' defaults: ALS, 64 factors


def test_ndcg(split: Any, params: LearnerParams, cache: dict[Any, float]) -> float:
    key = repr(params)
    if key not in cache:
        factors = fit(split.train, params)
        cache[key] = ranking_metrics(scores_recommender(factors.scores, split.train), split)["ndcg@10"]
    return cache[key]


def runs(name: str, matrix: sp.csr_matrix, seeds: int) -> list[dict[str, Any]]:
    split = holdout_split(matrix, seed=SEED)
    options = TuningSettings()
    cache: dict[Any, float] = {}
    out = []
    for seed in range(SEED, SEED + seeds):
        validation = validation_split(split.train, seed=seed)
        started = time.monotonic()
        outcome = collaborative_search(validation, CONFIGURED, options=TuningSettings(seed=seed))
        seconds = time.monotonic() - started
        transfer = _Transfer.between(validation.train, validation.train, weight_scale(validation.train))
        seen = _CAPTURED[-1]  # the search's candidates: the choice is made again with margin 0
        best_of = {
            a: max((c for c in seen if c.params.algorithm == a), key=lambda c: c.score, default=None)
            for a in ("ease", "als")
        }
        if best_of["ease"] is None or best_of["als"] is None:  # the budget let one learner run no candidate
            print(f"{name} seed {seed}: {'EASE' if best_of['ease'] is None else 'ALS'} ran no candidate", flush=True)
            continue
        by_score = serving_choose(seen, tolerance=options.serving_tolerance, switch_margin=0.0)
        assert by_score is not None
        lead = best_of["als"].score - best_of["ease"].score
        out.append(
            {
                "set": name,
                "seed": seed,
                "chosen": outcome.params,
                "chosen_test": test_ndcg(split, outcome.params, cache),
                "margin0": by_score.params,
                "margin0_test": test_ndcg(split, transfer.absolute(by_score.params), cache),
                "ease": best_of["ease"],
                "ease_test": test_ndcg(split, transfer.absolute(best_of["ease"].params), cache),
                "als": best_of["als"],
                "als_test": test_ndcg(split, transfer.absolute(best_of["als"].params), cache),
                "lead_se": lead / max(paired_standard_error(best_of["als"].per_user, best_of["ease"].per_user), 1e-12),
                "seconds": seconds,
            }
        )
        print(_row(out[-1]), flush=True)
    return out


_CAPTURED: list[list[Candidate]] = []


def _capture() -> None:
    """Keep each search's candidates (the choice is re-made from them with another margin)."""
    import embeddings.tuning as tuning

    original = tuning.serving_choose

    def capturing(candidates: list[Candidate], **kwargs: float) -> Candidate | None:
        _CAPTURED.append(list(candidates))
        return original(candidates, **kwargs)

    tuning.serving_choose = capturing  # type: ignore[assignment]


def _described(params: LearnerParams) -> str:
    extra = f", β {params.popularity:+.2f}" if params.algorithm == "ease" else ""
    return f"{params.algorithm} {params.factors}-d{extra}"


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['set']} | {r['seed']} | {r['ease'].score:.4f} / {r['als'].score:.4f} | {r['lead_se']:+.2f} "
        f"| {r['ease_test']:.4f} / {r['als_test']:.4f} | {_described(r['margin0'])}: {r['margin0_test']:.4f} "
        f"| **{_described(r['chosen'])}: {r['chosen_test']:.4f}** | {r['seconds']:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, nargs="*", default=[], help="more MovieLens folders")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    _capture()
    sets: list[tuple[str, sp.csr_matrix]] = []
    if (MOVIELENS / "ratings.csv").exists():
        sets.append(("ml-latest-small", movielens_sets()[0].matrix))
    for folder in args.movielens:
        sets.append((folder.resolve().name, movielens_sets(folder.resolve(), folder.resolve().name)[0].matrix))
    sets.append(("generated", generated_set().matrix))
    header = [
        "| data set | validation seed | validation NDCG@10, EASE / ALS best | ALS lead, standard errors "
        "| test NDCG@10, EASE / ALS best | the best validation score served (margin 0): test "
        "| **served (margin 1)**: test | search |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    print("\n".join(header))
    results = [r for name, matrix in sets for r in runs(name, matrix, args.seeds)]
    lines = [
        "## Choosing between learners (`bench/learner_choice.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}. Per data set: positives (binary), the "
        f"per-user 80/20 test split (seed {SEED}); a run's search with the product's defaults (ALS "
        "configured, EASE searched beside it) on validation splits of the training part with seeds "
        f"{SEED}-{SEED + args.seeds - 1}; each learner named is fitted on the whole training part and "
        "scored on the test split (NDCG@10, every test user). *margin 0*: the candidate with the best "
        "validation score (then its smallest cut within one standard error); *margin 1*: ALS replaces "
        "EASE only when it leads by more than one standard error of the paired per-user differences "
        "(`RECSYS_CF_SWITCH_MARGIN`).",
        "",
        *header,
        *(_row(r) for r in results),
        "",
    ]
    for name in dict.fromkeys(r["set"] for r in results):
        mine = [r for r in results if r["set"] == name]
        zero = np.array([r["margin0_test"] for r in mine])
        one = np.array([r["chosen_test"] for r in mine])
        lines.append(
            f"- {name}: served test NDCG@10 {one.min():.4f}-{one.max():.4f} (mean {one.mean():.4f}) with the "
            f"margin, {zero.min():.4f}-{zero.max():.4f} (mean {zero.mean():.4f}) without."
        )
    text = "\n".join(lines)
    print(text)
    write_section("learner-choice", text)


if __name__ == "__main__":
    main()
