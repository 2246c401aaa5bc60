"""Hyper-parameter search for the collaborative learners: data-relative, log-scale, time-bounded.

Parameters are searched in units of the data, so that the same search works on any weighting:
weights are divided by their mean magnitude (``weight_scale``), EASE's λ is a multiple of the mean
diagonal of XᵀX, and ALS's alpha multiplies the normalised weights. Scaling every weight by a
constant therefore changes neither the search nor the model it picks. The search itself is a
compass search in log space that keeps stepping while it improves (so a range widens until the
best point is interior) and halves its steps once both neighbours of the best point are worse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from embeddings.evaluation import Split, holdout_split, ranking_metrics, scores_recommender
from embeddings.interactions import bm25_confidence
from embeddings.learners import LearnerParams, Svd, fit

Point = dict[str, float]
Objective = Callable[[Point], float]


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a start, a multiplicative step (> 1) and bounds, in its own units."""

    name: str
    start: float
    step: float = 4.0
    low: float = 0.0
    high: float = math.inf
    integer: bool = False
    min_step: float = 1.3  # steps below this change the model less than the evaluation's noise

    def clip(self, value: float) -> float:
        value = min(max(value, self.low), self.high)
        return float(round(value)) if self.integer else value


@dataclass
class Trial:
    point: Point
    score: float
    seconds: float


@dataclass
class SearchResult:
    """Every evaluated point, the best one, and whether each dimension's best value is bracketed
    by worse neighbours (False when the budget or the bounds ended the search first)."""

    trials: list[Trial] = field(default_factory=list)
    bracketed: dict[str, bool] = field(default_factory=dict)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.score)


class _Budget:
    def __init__(self, deadline: float, max_evals: int) -> None:
        self.deadline, self.max_evals, self.used = deadline, max_evals, 0

    def spent(self) -> bool:
        return self.used >= self.max_evals or time.monotonic() >= self.deadline


def log_search(
    objective: Objective,
    dimensions: list[Dimension],
    *,
    deadline: float = math.inf,
    max_evals: int = 40,
    choices: dict[str, tuple[float, ...]] | None = None,
) -> SearchResult:
    """Maximise ``objective`` over ``dimensions`` (log scale) and ``choices`` (a few fixed values).

    The start point is always evaluated; the search stops at ``deadline`` (``time.monotonic()``),
    after ``max_evals`` evaluations, or when every step is below its ``min_step``.
    """
    result = SearchResult()
    seen: dict[tuple[tuple[str, float], ...], float] = {}
    budget = _Budget(deadline, max_evals)

    def evaluate(point: Point) -> float | None:
        key = tuple(sorted((k, round(v, 9)) for k, v in point.items()))
        if key in seen:
            return seen[key]
        if budget.spent() and result.trials:
            return None
        started = time.monotonic()
        score = float(objective(dict(point)))
        budget.used += 1
        seen[key] = score
        result.trials.append(Trial(dict(point), score, time.monotonic() - started))
        return score

    best = {d.name: d.clip(d.start) for d in dimensions} | {k: v[0] for k, v in (choices or {}).items()}
    best_score = evaluate(best)
    assert best_score is not None
    steps = {d.name: d.step for d in dimensions}
    while not budget.spent() and any(steps[d.name] >= d.min_step for d in dimensions):
        moved = False
        for name, values in (choices or {}).items():
            for value in values:
                score = evaluate({**best, name: value})
                if score is not None and score > best_score:
                    best, best_score, moved = {**best, name: value}, score, True
        for dim in dimensions:
            if steps[dim.name] < dim.min_step:
                continue
            best, best_score, improved = _line(evaluate, dim, best, best_score, steps[dim.name])
            moved = moved or improved
        if budget.spent():
            break
        if not moved:
            steps = {name: math.sqrt(step) for name, step in steps.items()}
    result.bracketed = {d.name: _bracketed(d, best, seen, steps[d.name]) for d in dimensions}
    return result


def _line(
    evaluate: Callable[[Point], float | None], dim: Dimension, best: Point, best_score: float, step: float
) -> tuple[Point, float, bool]:
    """Step ``dim`` up and down from ``best``; keep going in a direction while it improves."""
    improved = False
    for factor in (step, 1.0 / step):
        while True:
            value = dim.clip(best[dim.name] * factor)
            if value == best[dim.name]:
                break
            score = evaluate({**best, dim.name: value})
            if score is None or score <= best_score:
                break
            best, best_score, improved = {**best, dim.name: value}, score, True
        if improved:
            break
    return best, best_score, improved


def _bracketed(dim: Dimension, best: Point, seen: dict[tuple[tuple[str, float], ...], float], step: float) -> bool:
    """Both log-neighbours of the best value (at the last step used) were evaluated and scored lower."""
    best_key = tuple(sorted((k, round(v, 9)) for k, v in best.items()))
    score = seen[best_key]
    sides = []
    for factor in (step, 1.0 / step, step * step, 1.0 / (step * step)):
        value = dim.clip(best[dim.name] * factor)
        key = tuple(sorted((k, round(v, 9)) for k, v in {**best, dim.name: value}.items()))
        if key in seen and value != best[dim.name]:
            sides.append((value > best[dim.name], seen[key] <= score))
    return any(up and worse for up, worse in sides) and any(not up and worse for up, worse in sides)


# ---- the collaborative learners' search spaces -----------------------------------------------


def weight_scale(matrix: sp.csr_matrix) -> float:
    """Mean magnitude of the stored weights: the unit every searched parameter is relative to."""
    return float(np.abs(matrix.data).mean()) if matrix.nnz else 1.0


def gram_diagonal_mean(matrix: sp.csr_matrix) -> float:
    """Mean of diag(XᵀX) over items with any interaction (EASE's λ is a multiple of it)."""
    squares = np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel()
    active = squares > 0
    return float(squares[active].mean()) if active.any() else 1.0


@dataclass(frozen=True)
class TuningSettings:
    """The search's knobs; defaults chosen on ml-latest-small and checked on its rescaled, binarised
    and generated variants (bench/quality.py)."""

    budget_seconds: float = 90.0
    max_evals: int = 30
    eval_users: int = 2_000  # users scored per candidate; the winner is re-scored on more
    ease: bool = True
    ease_factors: int = 400
    ease_lambda_start: float = 30.0  # × mean diag(XᵀX); the best on ml-latest-small lies near 30-70
    als_alpha_start: float = 10.0  # × 1 / mean weight
    als_regularization_start: float = 0.05
    seed: int = 42


@dataclass
class TuningOutcome:
    """The chosen learner (absolute parameters, ready to fit on the full matrix) and what was tried."""

    params: LearnerParams
    score: float
    tried: list[dict[str, Any]]
    bracketed: dict[str, dict[str, bool]]


def collaborative_search(
    split: Split,
    configured: LearnerParams,
    *,
    options: TuningSettings,
    report: Callable[..., None] = lambda **_: None,
) -> TuningOutcome:
    """Search EASE's λ and the configured learner's parameters on ``split``; return the best.

    ``split.train`` is what candidates fit on and ``split.test`` what they are scored on
    (NDCG@10 over at most ``options.eval_users`` users, the same sample for every candidate).
    The time budget is shared: EASE (one SVD, then a cheap step per λ) goes first.
    """
    deadline = time.monotonic() + options.budget_seconds
    scale = weight_scale(split.train)
    normalised = (split.train / scale).tocsr().astype(np.float32)
    evaluate = _scorer(normalised, split, options)
    tried: list[dict[str, Any]] = []
    outcomes: list[tuple[float, LearnerParams]] = []
    bracketed: dict[str, dict[str, bool]] = {}

    def record(algorithm: str, params: LearnerParams, score: float, **relative: float) -> None:
        tried.append(
            {"algorithm": algorithm, **{k: round(v, 4) for k, v in relative.items()}, "ndcg@10": round(score, 5)}
        )
        report(candidate=len(tried), algorithm=algorithm, tried=list(tried))

    search = _Search(normalised, evaluate, options, deadline, configured, record)
    if options.ease or configured.algorithm == "ease":
        result, best = _ease_search(search)
        outcomes.append(best)
        bracketed["ease"] = result.bracketed
    if configured.algorithm != "ease":
        result, best = _implicit_search(search)
        outcomes.append(best)
        bracketed[configured.algorithm] = result.bracketed
    score, params = max(outcomes, key=lambda o: o[0])
    return TuningOutcome(_absolute(params, scale), score, tried, bracketed)


def _scorer(normalised: sp.csr_matrix, split: Split, options: TuningSettings) -> Callable[[Any], float]:
    def evaluate(factors: Any) -> float:
        recommend = scores_recommender(factors.scores, normalised)
        return ranking_metrics(recommend, split, max_users=options.eval_users, seed=options.seed)["ndcg@10"]

    return evaluate


@dataclass(frozen=True)
class _Search:
    """One learner's search: the normalised training matrix, the scorer, the budget and the
    configured learner, and where each candidate is recorded."""

    normalised: sp.csr_matrix
    evaluate: Callable[[Any], float]
    options: TuningSettings
    deadline: float
    configured: LearnerParams
    record: Callable[..., None]

    def score(self, matrix: sp.csr_matrix, params: LearnerParams, svd_cache: Any = None, **shown: float) -> float:
        """Fit ``params`` on ``matrix``, score it on the validation users, and record it."""
        score = self.evaluate(fit(matrix, params, svd_cache=svd_cache))
        self.record(params.algorithm, params, score, **shown)
        return score

    def run(
        self, objective: Objective, dimensions: list[Dimension], choices: dict[str, tuple[float, ...]] | None = None
    ) -> SearchResult:
        return log_search(
            objective, dimensions, deadline=self.deadline, max_evals=self.options.max_evals, choices=choices
        )


def _ease_search(search: _Search) -> tuple[SearchResult, tuple[float, LearnerParams]]:
    unit = gram_diagonal_mean(search.normalised)
    configured, options = search.configured, search.options
    factors = configured.factors if configured.algorithm == "ease" else options.ease_factors
    svd_cache: dict[int, Svd] = {}

    def params_at(point: Point) -> LearnerParams:
        return LearnerParams(
            algorithm="ease", factors=factors, regularization=point["lambda"] * unit, random_state=options.seed
        )

    result = search.run(
        lambda point: search.score(
            search.normalised, params_at(point), svd_cache, lambda_relative=point["lambda"], factors=factors
        ),
        [Dimension("lambda", options.ease_lambda_start, step=4.0, low=1e-4, high=1e6, min_step=1.2)],
    )
    return result, (result.best.score, params_at(result.best.point))


def _implicit_search(search: _Search) -> tuple[SearchResult, tuple[float, LearnerParams]]:
    configured, options = search.configured, search.options
    bm25_cache: dict[bool, sp.csr_matrix] = {}

    def confidences(bm25: bool) -> sp.csr_matrix:
        if bm25 not in bm25_cache:
            bm25_cache[bm25] = bm25_confidence(search.normalised) if bm25 else search.normalised
        return bm25_cache[bm25]

    def params_at(point: Point) -> LearnerParams:
        return replace(
            configured,
            factors=int(point["factors"]),
            regularization=point["regularization"],
            iterations=int(point["iterations"]),
            alpha=point.get("alpha", configured.alpha),
            bm25=bool(point["bm25"]),
        )

    def objective(point: Point) -> float:
        params = params_at(point)
        return search.score(confidences(params.bm25), params, **point)

    dimensions = [
        Dimension("factors", configured.factors, step=2.0, low=8, high=512, integer=True, min_step=1.5),
        Dimension("regularization", options.als_regularization_start, step=10.0, low=1e-5, high=1e3),
        Dimension("iterations", configured.iterations, step=2.0, low=3, high=60, integer=True, min_step=1.5),
    ]
    if configured.algorithm == "als":
        dimensions.insert(0, Dimension("alpha", options.als_alpha_start, step=4.0, low=1e-3, high=1e4))
    result = search.run(objective, dimensions, choices={"bm25": (float(configured.bm25), float(not configured.bm25))})
    return result, (result.best.score, params_at(result.best.point))


def _absolute(params: LearnerParams, scale: float) -> LearnerParams:
    """Parameters found on weights / ``scale`` restated for the raw weights the version is fitted
    and folded in on: ALS's confidence is alpha × weight, EASE's λ is in units of weight²."""
    if params.algorithm == "ease":
        return replace(params, regularization=params.regularization * scale * scale, weight_scale=scale)
    if params.algorithm == "als":
        return replace(params, alpha=params.alpha / scale, weight_scale=scale)
    return replace(params, weight_scale=scale)


def validation_split(matrix: sp.csr_matrix, *, seed: int) -> Split:
    """The per-user 80/20 split every candidate is fitted and scored on."""
    return holdout_split(matrix, test_fraction=0.2, seed=seed)


def learner_confidences(matrix: sp.csr_matrix, params: LearnerParams) -> sp.csr_matrix:
    """The matrix a chosen learner is fitted on: BM25 over the normalised weights when it asks for
    it (then restated in raw units), else the raw weights."""
    if not params.bm25:
        return matrix
    scale = params.weight_scale or weight_scale(matrix)
    return (bm25_confidence((matrix / scale).tocsr()) * scale).tocsr()
