"""Hyper-parameter search for the collaborative learners: data-relative, log-scale, time-bounded.

Parameters are searched in units of the data, so that the same search works on any weighting:
weights are divided by their mean magnitude (``weight_scale``), EASE's λ is a multiple of the mean
diagonal of XᵀX, EASE's popularity exponent β is a power of counts of users (no weights in it), and
ALS's alpha multiplies the normalised weights. Scaling every weight by a
constant therefore changes neither the search nor the model it picks. The search itself is a
compass search in log space that keeps stepping while it improves (so a range widens until the
best point is interior) and halves its steps once both neighbours of the best point are worse.

The budget is a deadline, not a start line: each candidate's seconds are estimated from the
candidates already run (seconds per unit of work, its work from the data's size and the
candidate's rank and iterations), and one that cannot finish before the deadline is not started.
The first candidate of each learner is estimated the same way, from a rate measured beforehand and
scaled by how fast this machine runs a reference workload now (``first_rates``,
``machine_slowdown``); EASE's rank is halved until its first candidate fits its share.
On data past ``sample_interactions``, candidates are fitted and scored on a seeded user sample
of the split, and the winner's parameters are restated for the whole split (EASE's λ by the ratio
of the Gram matrices' traces; ALS's regularization as found: measured in BENCHMARKS.md, tuning-sample).

Choosing among the candidates (``serving_choose``). They are fitted on 80% of what the served model
is, and learners do not gain alike from the rest: EASE's λ is relative to the data and transfers,
ALS's factors and regularization are absolute and were picked for the smaller matrix. So ALS (or
BPR, LMF) replaces EASE only when it leads EASE's best by more than ``switch_margin`` standard
errors of the per-user paired differences. The choice then weighs what the model costs to serve:
every search of its HNSW index computes inner products of its dimension, and a high-dimensional
model also needs a wider search for the same recall (100k generated items: EASE 400-d needed
ef_search 400 for recall@10 0.99, 5.5 ms of PostgreSQL CPU per request). EASE's searched λ and β
are also tried at half its rank, a quarter, ... from the leading components of the same SVD, so no
new SVD (``_ease_rank_probes``), and the smallest of those cuts within ``serving_tolerance``
standard errors of the chosen model is served (the one-standard-error rule of model selection): a
strongly regularised EASE puts little weight on its trailing components, and on the 100k-item set
above rank 32 scored as well as rank 400.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from embeddings.evaluation import Split, earned_choice, holdout_split, ranking_metrics_by_user, scores_recommender
from embeddings.interactions import WEIGHTINGS, bm25_confidence, matrix_weighted
from embeddings.learners import Factors, LearnerParams, Svd, fit

Point = dict[str, float]
Objective = Callable[[Point], float]
# The fewest dimensions an EASE version is cut to: by the rank probes here, and by a training run whose
# index cannot serve its model (``embeddings.services``).
EASE_MIN_SERVING_FACTORS = 16


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
    """Every evaluated point, the best one, whether each dimension's best value is bracketed by
    worse neighbours (False when the budget or the bounds ended the search first), and the points
    not started because their estimated time did not fit in what was left of the budget."""

    trials: list[Trial] = field(default_factory=list)
    bracketed: dict[str, bool] = field(default_factory=dict)
    skipped: list[Point] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda t: t.score)


class _Budget:
    def __init__(self, deadline: float, max_evals: int) -> None:
        self.deadline, self.max_evals, self.used = deadline, max_evals, 0

    def spent(self) -> bool:
        return self.used >= self.max_evals or time.monotonic() >= self.deadline


class CostModel:
    """Seconds per unit of work, learnt from the candidates already run: the slowest rate seen for
    a kind of candidate (a loaded machine only makes later ones slower); for a kind not run yet its
    prior (``prior``: measured beforehand, scaled to this machine), else the slowest rate of any kind
    times ``margin`` (their work units are only comparable)."""

    def __init__(self, margin: float = 2.0) -> None:
        self.margin = margin
        self.rates: dict[str, float] = {}
        self.priors: dict[str, float] = {}

    def observe(self, kind: str, work: float, seconds: float) -> None:
        self.rates[kind] = max(self.rates.get(kind, 0.0), seconds / max(work, 1e-12))

    def prior(self, kind: str, rate: float) -> None:
        """Seconds per unit of ``kind`` until one of its candidates has run."""
        self.priors[kind] = rate

    def seconds(self, kind: str, work: float) -> float | None:
        """Estimated seconds of ``work`` units of ``kind``; None when nothing tells."""
        if kind in self.rates:
            return self.rates[kind] * work
        if kind in self.priors:
            return self.priors[kind] * work
        known = list(self.rates.values()) or list(self.priors.values())
        return max(known) * work * self.margin if known else None


def log_search(
    objective: Objective,
    dimensions: list[Dimension],
    *,
    deadline: float = math.inf,
    max_evals: int = 40,
    choices: dict[str, tuple[float, ...]] | None = None,
    work: Callable[[Point], float] | None = None,
    costs: CostModel | None = None,
    kind: str = "candidate",
    always_start: bool = True,
) -> SearchResult:
    """Maximise ``objective`` over ``dimensions`` (log scale) and ``choices`` (a few fixed values).

    The search stops at ``deadline`` (``time.monotonic()``), after ``max_evals`` evaluations, or
    when every step is below its ``min_step``. A point is started only if its estimated seconds
    (``costs`` × ``work(point)``, 1 unit a point without ``work``) end before the deadline; the
    start point runs regardless when ``always_start`` and nothing tells its cost yet. Without a
    start point the result has no trials.
    """
    result = SearchResult()
    seen: dict[tuple[tuple[str, float], ...], float] = {}
    budget = _Budget(deadline, max_evals)
    costs = costs or CostModel()

    def evaluate(point: Point) -> float | None:
        key = tuple(sorted((k, round(v, 9)) for k, v in point.items()))
        if key in seen:
            return seen[key]
        if budget.used >= budget.max_evals:
            return None
        units = work(point) if work is not None else 1.0
        estimate = costs.seconds(kind, units)
        unknown_start = always_start and not result.trials and estimate is None
        if not unknown_start and time.monotonic() + (estimate or 0.0) > budget.deadline:
            if point not in result.skipped:
                result.skipped.append(dict(point))
            return None
        started = time.monotonic()
        score = float(objective(dict(point)))
        seconds = time.monotonic() - started
        costs.observe(kind, units, seconds)
        budget.used += 1
        seen[key] = score
        result.trials.append(Trial(dict(point), score, seconds))
        return score

    best = {d.name: d.clip(d.start) for d in dimensions} | {k: v[0] for k, v in (choices or {}).items()}
    best_score = evaluate(best)
    if best_score is None:
        result.bracketed = {d.name: False for d in dimensions}
        return result
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
    and generated variants (bench/quality.py), and at 10M interactions (bench/scale.py)."""

    budget_seconds: float = 90.0
    max_evals: int = 30
    eval_users: int = 2_000  # users scored per candidate; the winner is re-scored on more
    # Past this many training interactions, candidates fit on a seeded user sample of about this
    # many (0: never sample). BENCHMARKS.md "tuning-sample" compares it with tuning on everything.
    sample_interactions: int = 1_000_000
    ease: bool = True
    ease_factors: int = 400
    ease_lambda_start: float = 30.0  # × mean diag(XᵀX); the best on ml-latest-small lies near 30-70
    # Search EASE's item popularity exponent β (``LearnerParams.popularity``) between -2 and 2.
    ease_popularity: bool = True
    # EASE goes first and may use this share of the budget; the configured learner gets the rest.
    ease_budget_share: float = 0.5
    als_alpha_start: float = 10.0  # × 1 / mean weight
    als_regularization_start: float = 0.05
    seed: int = 42
    # Seconds per unit of work (ease_work, als_work) of each kind's first candidate, before any has run:
    # CPU-seconds measured on the 2-core reference machine (one BLAS thread) on ml-latest-small and on a
    # 1M-interaction sample of bench/scale.py's data (EASE rank 400: 0.076 and 0.097 ns; ALS 64
    # factors, 15 iterations: 0.67 and 0.56 ns), doubled, then × ``machine_slowdown()`` at the
    # search's start. So the first candidate is estimated from its size like every other one.
    first_rates: tuple[tuple[str, float], ...] = (("ease", 2.0e-10), ("als", 1.3e-9))
    # EASE's rank is halved (not below this) until its first candidate is estimated to end in its share.
    ease_min_factors: int = 50
    # EASE's searched λ and β are tried at half its rank, a quarter, ... down to this (``_ease_rank_probes``).
    ease_min_serving_factors: int = EASE_MIN_SERVING_FACTORS
    threads: int = 1  # EASE's sparse products run on this many blocks of users (learners.fit)
    # A candidate with fewer dimensions is served instead of the best when its validation NDCG@10 is
    # within this many standard errors of the paired per-user differences (``serving_choose``).
    serving_tolerance: float = 1.0
    # A learner with absolute parameters replaces EASE only when its validation NDCG@10 is more than
    # this many standard errors above EASE's best (``serving_choose``).
    switch_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.budget_seconds < 0 or self.max_evals < 1 or self.eval_users < 1 or self.sample_interactions < 0:
            raise ValueError("budget_seconds, sample_interactions ≥ 0 and max_evals, eval_users ≥ 1 are required")
        if not 0 <= self.serving_tolerance < math.inf:
            raise ValueError(f"serving_tolerance must be finite and ≥ 0, got {self.serving_tolerance}")
        if not 0 <= self.switch_margin < math.inf:
            raise ValueError(f"switch_margin must be finite and ≥ 0, got {self.switch_margin}")
        if not 0.0 < self.ease_budget_share <= 1.0:
            raise ValueError(f"ease_budget_share must be in (0, 1], got {self.ease_budget_share}")


@dataclass
class TuningOutcome:
    """The chosen learner (absolute parameters, ready to fit on the full matrix) and what was tried:
    the candidates run, those not started for lack of budget, and the sample they were run on.

    ``split`` is what the candidates were fitted and scored on (a user sample of the split past
    ``sample_interactions``, raw weights), and ``factors`` the winner as fitted there (on the
    normalised weights: the same ranking); None when no candidate ran."""

    params: LearnerParams
    score: float
    tried: list[dict[str, Any]]
    bracketed: dict[str, dict[str, bool]]
    skipped: int = 0
    sample: dict[str, float] = field(default_factory=dict)
    split: Split | None = None
    factors: Factors | None = None
    # When another candidate than the best-scoring one was chosen (EASE over a learner that did not
    # lead it by the switch margin, or the same model at fewer dimensions): the best's NDCG@10 and
    # dimensions, the chosen one's dimensions, and the standard error of their difference (which
    # learner each candidate was: ``tried``).
    cheaper: dict[str, float] = field(default_factory=dict)
    # EASE: the winner as fitted on ``split`` at a given number of dimensions (see ``_Search.cut``).
    cut: Callable[[int], Factors] | None = None

    @property
    def sampled(self) -> bool:
        """The candidates saw a user sample, not the whole split."""
        return self.sample.get("fraction", 1.0) < 1.0


def user_sample(split: Split, max_interactions: int, *, seed: int) -> Split:
    """The split restricted to a seeded random set of users whose training interactions add up to
    at most ``max_interactions`` (the whole split when it already fits, or when it is 0).

    Users are taken in a random order while the running total fits, so the sample keeps the
    users' activity distribution (less any user who alone has more than ``max_interactions``);
    every column is kept (items unseen in the sample stay, empty). The same split and seed always
    give the same sample.
    """
    if not max_interactions or split.train.nnz <= max_interactions:
        return split
    counts = np.diff(split.train.indptr)
    order = np.random.default_rng(seed).permutation(split.train.shape[0])
    order = order[counts[order] <= max_interactions]
    users = np.sort(order[np.cumsum(counts[order]) <= max_interactions])
    return Split(split.train[users].tocsr(), split.test[users].tocsr())


# A reference workload (a sparse product and a QR, the EASE candidates' two kinds of work) and its wall
# seconds on the reference machine (the 2-core one of BENCHMARKS.md, one BLAS thread: the median CPU
# time of 30 runs, which is its wall time when the machine is quiet).
_REFERENCE_SECONDS = 0.008


def machine_slowdown() -> float:
    """How much slower than the reference machine this one runs now (wall time of a ~10 ms workload,
    median of 3: load counts, since the budget is a deadline), at least 0.25.

    One BLAS thread, as the reference and the worker run (``OPENBLAS_NUM_THREADS=1``): a process
    left with OpenBLAS' default threads measured 6-175× under load 12 on 2 cores (threads spinning
    against each other), against a steady 2.5-5× with one, and so halved EASE's rank to its floor."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    matrix = sp.random(2_000, 2_000, density=0.01, format="csr", random_state=rng, dtype=np.float64)
    block = rng.standard_normal((2_000, 64))
    seconds = []
    with threadpool_limits(1, "blas"):
        for _ in range(3):
            started = time.perf_counter()
            np.linalg.qr(matrix.T @ (matrix @ block))
            seconds.append(time.perf_counter() - started)
    return max(float(np.median(seconds)) / _REFERENCE_SECONDS, 0.25)


def collaborative_search(
    split: Split,
    configured: LearnerParams,
    *,
    options: TuningSettings,
    report: Callable[..., None] = lambda **_: None,
) -> TuningOutcome:
    """Search EASE's λ (and its rank, ``_ease_rank_probes``) and the configured learner's parameters
    on ``split``; return the one to serve (``serving_choose``: the best, or a smaller one as good).

    ``split.train`` is what candidates fit on and ``split.test`` what they are scored on
    (NDCG@10 over at most ``options.eval_users`` users, the same sample for every candidate);
    past ``options.sample_interactions`` both are a user sample (``user_sample``) and the winner
    is restated for the whole split. The time budget is shared: EASE (one SVD, then a cheap step
    per λ) goes first, with up to ``options.ease_budget_share`` of it.
    """
    started = time.monotonic()
    scale = weight_scale(split.train)
    sample = user_sample(split, options.sample_interactions, seed=options.seed)
    normalised = (sample.train / scale).tocsr().astype(np.float32)
    tried: list[dict[str, Any]] = []

    def record(algorithm: str, params: LearnerParams, score: float, **relative: Any) -> None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in relative.items()}
        tried.append({"algorithm": algorithm, **shown, "ndcg@10": round(score, 5)})
        report(candidate=len(tried), algorithm=algorithm, tried=list(tried))

    scorer = _scorer(normalised, sample, options)  # it masks train items: the same under any weighting
    weighting = "raw"
    if options.ease or configured.algorithm == "ease":
        probe_deadline = started + options.budget_seconds * WEIGHTING_BUDGET_SHARE
        weighting = weighting_choose(normalised, scorer, options, record, deadline=probe_deadline)
    search = _Search(
        matrix_weighted(normalised, weighting, 1.0),
        scorer,
        options,
        started + options.budget_seconds,
        configured,
        record,
    )
    # λ restated from the sample to the whole split by their ratio of Σw², the weights read as chosen.
    transfer = _Transfer.between(split.train, sample.train, scale, weighting)
    slowdown = machine_slowdown()
    for kind, rate in options.first_rates:
        search.costs.prior(kind, rate * slowdown)
    runs: dict[str, tuple[SearchResult, Callable[[Point], LearnerParams]]] = {}
    if options.ease or configured.algorithm == "ease":
        share = 1.0 if configured.algorithm == "ease" else options.ease_budget_share
        runs["ease"] = _ease_search(search, deadline=started + options.budget_seconds * share)
    if configured.algorithm != "ease":
        runs[configured.algorithm] = _implicit_search(search, first=not runs or not runs["ease"][0].trials)
    chosen = serving_choose(
        search.candidates.all, tolerance=options.serving_tolerance, switch_margin=options.switch_margin
    )
    # No candidate could end in the budget: the configured learner as it is (its parameters are absolute).
    return TuningOutcome(
        replace(transfer.absolute(chosen.params), weighting=weighting) if chosen else configured,
        chosen.score if chosen else math.nan,
        tried,
        {name: result.bracketed for name, (result, _) in runs.items()},
        skipped=sum(len(result.skipped) for result, _ in runs.values()),
        sample={
            "users": float(sample.train.shape[0]),
            "interactions": float(sample.train.nnz),
            "fraction": round(transfer.fraction, 6),
        },
        split=sample,
        factors=search.candidates.factors_of(chosen) if chosen else None,
        cheaper=search.candidates.cheaper(chosen) if chosen else {},
        cut=search.cut(chosen) if chosen else None,
    )


@dataclass(frozen=True)
class _Transfer:
    """Restates parameters found on a user sample of the normalised weights for the raw weights of
    the whole split. EASE's λ grows with XᵀX, which a user sample shrinks by the ratio of the traces
    (Σ w²). ALS's regularization is kept as found: on the generated set of BENCHMARKS.md
    (tuning-sample) the best value was the same on a 19% sample and on everything, and dividing it
    by √fraction (what the singular values of a user sample would suggest) scored 1.9% lower."""

    scale: float
    gram_ratio: float  # trace of XᵀX, whole / sample
    fraction: float  # interactions, sample / whole

    @classmethod
    def between(cls, whole: sp.csr_matrix, sample: sp.csr_matrix, scale: float, weighting: str = "raw") -> _Transfer:
        if sample is whole:
            return cls(scale, 1.0, 1.0)
        squares = _squares(matrix_weighted(whole, weighting, scale)) / _squares(
            matrix_weighted(sample, weighting, scale)
        )
        return cls(scale, squares, sample.nnz / max(whole.nnz, 1))

    def absolute(self, params: LearnerParams) -> LearnerParams:
        """ALS's confidence is alpha × weight, EASE's λ is in units of weight²."""
        if params.algorithm == "ease":
            regularization = params.regularization * self.gram_ratio * self.scale * self.scale
            return replace(params, regularization=regularization, weight_scale=self.scale)
        if params.algorithm == "als":
            return replace(params, alpha=params.alpha / self.scale, weight_scale=self.scale)
        return replace(params, weight_scale=self.scale)


def _squares(matrix: sp.csr_matrix) -> float:
    """Σ w², the trace of XᵀX."""
    weights = matrix.data.astype(np.float64)
    return float(weights @ weights)


def _scorer(
    normalised: sp.csr_matrix, split: Split, options: TuningSettings
) -> Callable[[Any], npt.NDArray[np.float64]]:
    """NDCG@10 of each validation user scored (the same seeded sample for every candidate)."""

    def evaluate(factors: Any) -> npt.NDArray[np.float64]:
        recommend = scores_recommender(factors.scores, normalised)
        return ranking_metrics_by_user(recommend, split, max_users=options.eval_users, seed=options.seed).ndcg

    return evaluate


@dataclass(frozen=True, eq=False)
class Candidate:
    """One evaluated candidate: its parameters (relative to the normalised weights), its serving
    dimensions, its mean validation NDCG@10 and each scored user's (the same users for all)."""

    params: LearnerParams
    dimensions: int
    score: float
    per_user: npt.NDArray[np.float64]


def serving_choose(candidates: list[Candidate], *, tolerance: float, switch_margin: float = 0.0) -> Candidate | None:
    """The candidate to serve (None when there are none). Only the best-scoring candidate of each
    learner and dimension count is weighed (the first of equal scores).

    1. The best of all, except that a learner with absolute parameters (ALS, BPR, LMF) replaces
       EASE's best only when it scores more than ``switch_margin`` standard errors above it (the
       standard error of the mean of their paired per-user differences). Candidates are fitted on
       80% of what the served model is, and EASE gains more from the rest: its λ is relative to the
       data and transfers, while ALS's factors and regularization are absolute and the search picks
       them for the smaller matrix (on ml-100k and ml-latest-small, ALS's best validation score
       was 0.8 standard errors below EASE's best to 0.6 above it in 6 of 10 validation seeds, while
       on the held-out test it scored 3-21% below EASE in all 10; on the generated set with planted groups,
       where ALS is 0.8-1.6% better on test, it led by 1.5-3.9: BENCHMARKS.md, quality).
    2. Then the same model at fewer dimensions (an EASE rank probe: the leading components of the
       same SVD, at the same λ and β) when it scores within ``tolerance`` standard errors of it:
       the one with the fewest dimensions of those. A learner searched at fewer factors is not a
       cut of the same model, and the search already chose its factors."""
    groups: dict[tuple[str, int], Candidate] = {}
    for candidate in candidates:
        key = (candidate.params.algorithm, candidate.dimensions)
        if key not in groups or candidate.score > groups[key].score:
            groups[key] = candidate
    if not groups:
        return None
    weighed = list(groups.values())
    best = max(weighed, key=lambda c: c.score)
    ease = [c for c in weighed if c.params.algorithm == "ease"]
    if best.params.algorithm != "ease" and ease:
        ease_best = max(ease, key=lambda c: c.score)
        if _within(best, ease_best, switch_margin):
            best = ease_best
    within = [c for c in weighed if _cut_of(c, best) and _within(best, c, tolerance)]
    return min(within, key=lambda c: c.dimensions) if within else best


def _cut_of(candidate: Candidate, model: Candidate) -> bool:
    """Whether ``candidate`` is ``model`` at fewer dimensions: EASE from the same SVD, λ and β."""
    a, b = candidate.params, model.params
    if a.algorithm != "ease" or b.algorithm != "ease" or candidate.dimensions >= model.dimensions:
        return False
    return (a.svd_rank or a.factors) == (b.svd_rank or b.factors) and replace(
        a, factors=b.factors, svd_rank=b.svd_rank
    ) == b


def _within(best: Candidate, other: Candidate, tolerance: float) -> bool:
    return best.score - other.score <= tolerance * paired_standard_error(best.per_user, other.per_user)


def paired_standard_error(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """The standard error of mean(a - b) over paired observations (0 for fewer than two)."""
    if len(a) < 2:
        return 0.0
    return float(np.std(a - b, ddof=1) / math.sqrt(len(a)))


@dataclass
class _Candidates:
    """Every candidate scored, and the fitted factors of the best-scoring candidate of each learner
    and dimension count (one of them is served: ``serving_choose`` picks among those)."""

    all: list[Candidate] = field(default_factory=list)
    _factors: dict[tuple[str, int], tuple[float, Factors]] = field(default_factory=dict)

    def offer(self, params: LearnerParams, per_user: npt.NDArray[np.float64], factors: Factors) -> float:
        score = float(per_user.mean()) if len(per_user) else 0.0
        self.all.append(Candidate(params, factors.dimensions, score, per_user))
        key = (params.algorithm, factors.dimensions)
        if score > self._factors.get(key, (-math.inf, None))[0]:
            self._factors[key] = (score, factors)
        return score

    def factors_of(self, candidate: Candidate) -> Factors:
        return self._factors[(candidate.params.algorithm, candidate.dimensions)][1]

    def cheaper(self, chosen: Candidate) -> dict[str, float]:
        """When ``chosen`` is not the best-scoring candidate: which was, and by how much."""
        best = max(self.all, key=lambda c: c.score)
        if chosen is best:
            return {}
        return {
            "best_ndcg@10": round(best.score, 5),
            "best_dimensions": float(best.dimensions),
            "chosen_dimensions": float(chosen.dimensions),
            "standard_error": round(paired_standard_error(best.per_user, chosen.per_user), 5),
        }


@dataclass(frozen=True)
class _Search:
    """One run's search: the normalised training matrix (or its user sample), the scorer, the
    deadline, the configured learner, where each candidate is recorded, and the cost model the
    learners' searches share."""

    normalised: sp.csr_matrix
    evaluate: Callable[[Any], npt.NDArray[np.float64]]
    options: TuningSettings
    deadline: float
    configured: LearnerParams
    record: Callable[..., None]
    costs: CostModel = field(default_factory=CostModel)
    candidates: _Candidates = field(default_factory=_Candidates)
    svds: dict[int, Svd] = field(default_factory=dict)  # EASE's SVDs of ``normalised``, by rank

    def cut(self, chosen: Candidate) -> Callable[[int], Factors] | None:
        """For an EASE candidate: the candidate as fitted here at fewer dimensions (the leading
        components of its SVD), for a run whose index cannot serve it (``embeddings.services``)."""
        if chosen.params.algorithm != "ease":
            return None
        rank = chosen.params.svd_rank or chosen.params.factors
        # Only what a cut needs, not the search (its candidates' factors would outlive it).
        matrix, svds, threads, params = self.normalised, {rank: self.svds[rank]}, self.options.threads, chosen.params

        def fitted(factors: int) -> Factors:
            return fit(matrix, replace(params, factors=factors, svd_rank=rank), svd_cache=svds, threads=threads)

        return fitted

    def score(self, matrix: sp.csr_matrix, params: LearnerParams, svd_cache: Any = None, **shown: float) -> float:
        """Fit ``params`` on ``matrix``, score it on the validation users, and record it."""
        factors = fit(matrix, params, svd_cache=svd_cache, threads=self.options.threads)
        score = self.candidates.offer(params, self.evaluate(factors), factors)
        self.record(params.algorithm, params, score, **shown)
        return score

    def run(
        self,
        objective: Objective,
        dimensions: list[Dimension],
        *,
        kind: str,
        work: Callable[[Point], float],
        choices: dict[str, tuple[float, ...]] | None = None,
        deadline: float | None = None,
        first: bool = True,
    ) -> SearchResult:
        return log_search(
            objective,
            dimensions,
            deadline=min(self.deadline, deadline if deadline is not None else math.inf),
            max_evals=self.options.max_evals,
            choices=choices,
            work=work,
            costs=self.costs,
            kind=kind,
            always_start=first,
        )

    def size(self) -> tuple[int, int, int]:
        """Users, items and non-zeros of the matrix candidates fit on."""
        return int(self.normalised.shape[0]), int(self.normalised.shape[1]), int(self.normalised.nnz)

    def scored_users(self) -> int:
        return min(self.options.eval_users, self.normalised.shape[0])


def ease_work(n_users: int, n_items: int, nnz: int, rank: int, scored_users: int, *, with_svd: bool) -> float:
    """Multiply-adds of one EASE candidate: the SVD (≈ 10 passes over the non-zeros and the
    orthogonalisations, when not cached), the user vectors, and scoring the validation users."""
    work = nnz * rank + n_items * rank + scored_users * n_items * rank
    return work + (10.0 * (nnz * rank + (n_users + n_items) * rank * rank) if with_svd else 0.0)


def als_work(n_users: int, n_items: int, nnz: int, factors: int, iterations: int, scored_users: int) -> float:
    """Multiply-adds of one ALS candidate: per iteration, implicit's conjugate-gradient steps (3)
    over the non-zeros and the Gram matrices, then scoring the validation users."""
    per_iteration = 6.0 * nnz * factors + 2.0 * (n_users + n_items) * factors * factors
    return iterations * per_iteration + scored_users * n_items * factors


def _ease_search(search: _Search, *, deadline: float) -> tuple[SearchResult, Callable[[Point], LearnerParams]]:
    unit = gram_diagonal_mean(search.normalised)
    configured, options, matrix = search.configured, search.options, search.normalised
    wanted = configured.factors if configured.algorithm == "ease" else options.ease_factors
    factors = _ease_rank(search, wanted, deadline=min(deadline, search.deadline))
    svd_cache = search.svds

    def params_at(point: Point) -> LearnerParams:
        return LearnerParams(
            algorithm="ease",
            factors=factors,
            regularization=point["lambda"] * unit,
            popularity=popularity_exponent(point),
            random_state=options.seed,
        )

    rank = max(1, min(factors, min(matrix.shape) - 1))
    dimensions = [Dimension("lambda", options.ease_lambda_start, step=4.0, low=1e-4, high=1e6, min_step=1.2)]
    if options.ease_popularity:
        # The factor a twice as popular item's scores get (2^β): log steps of it are steps of β by 0.2.
        dimensions.append(Dimension("popularity", 1.0, step=2**0.2, low=0.25, high=4.0, min_step=2**0.05))
    result = search.run(
        lambda point: search.score(
            matrix, params_at(point), svd_cache, lambda_relative=point["lambda"], factors=factors, **_shown(point)
        ),
        dimensions,
        kind="ease",
        work=lambda _: ease_work(*search.size(), rank, search.scored_users(), with_svd=not svd_cache),
        deadline=deadline,
    )
    if result.trials:
        _ease_rank_probes(search, result.best.point, params_at(result.best.point), svd_cache, rank)
    return result, params_at


def _ease_rank_probes(search: _Search, point: Point, best: LearnerParams, svd_cache: dict[int, Svd], rank: int) -> None:
    """The searched λ and β at half ``rank``, a quarter, ... (down to ``ease_min_serving_factors``),
    from the leading components of the candidates' SVD (``svd_rank``: the served refit cuts them
    from an SVD of the same rank too), for the serving choice (``serving_choose``) to weigh: fewer
    dimensions are cheaper to search. Each is started only if it can end before the search's
    deadline (so the probes may use time of the configured learner's share: they cost about one
    full-rank candidate in all). A rank that scores worse does not end the halving: the scores are
    not monotonic in the rank (100,000 generated items, λ 480, β -0.2: rank 200 0.2724, 100 0.2716,
    50 0.2733, the best of all, 25 0.2712), and stopping at 100 served the 200-d model, whose index
    needed ef_search 400 (10 ms of CPU a request against 3.6 at 50-d)."""
    smaller = rank // 2
    while smaller >= search.options.ease_min_serving_factors:
        work = ease_work(*search.size(), smaller, search.scored_users(), with_svd=False)
        estimate = search.costs.seconds("ease", work)
        if estimate is not None and time.monotonic() + estimate > search.deadline:
            return
        params = replace(best, factors=smaller, svd_rank=best.factors)
        started = time.monotonic()
        search.score(
            search.normalised,
            params,
            svd_cache,
            lambda_relative=point["lambda"],
            factors=smaller,
            **_shown(point),
        )
        search.costs.observe("ease", work, time.monotonic() - started)
        smaller //= 2


def _ease_rank(search: _Search, wanted: int, *, deadline: float) -> int:
    """``wanted``, halved while EASE's first candidate (its SVD) is estimated to end past ``deadline``,
    down to ``ease_min_factors`` (then the search itself declines to start it if it still does not fit)."""
    floor = min(wanted, search.options.ease_min_factors)
    factors = wanted
    while factors // 2 >= floor:
        rank = max(1, min(factors, min(search.normalised.shape) - 1))
        seconds = search.costs.seconds("ease", ease_work(*search.size(), rank, search.scored_users(), with_svd=True))
        if seconds is None or time.monotonic() + seconds <= deadline:
            break
        factors //= 2
    return factors


def popularity_exponent(point: Point) -> float:
    """β of EASE's item popularity factor from the searched factor per doubling of popularity."""
    return math.log2(point["popularity"]) if "popularity" in point else 0.0


def _shown(point: Point) -> dict[str, float]:
    return {"popularity": round(popularity_exponent(point), 4)} if "popularity" in point else {}


def _implicit_search(search: _Search, *, first: bool) -> tuple[SearchResult, Callable[[Point], LearnerParams]]:
    configured, options, matrix = search.configured, search.options, search.normalised
    bm25_cache: dict[bool, sp.csr_matrix] = {}

    def confidences(bm25: bool) -> sp.csr_matrix:
        if bm25 not in bm25_cache:
            bm25_cache[bm25] = bm25_confidence(matrix) if bm25 else matrix
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

    def work(point: Point) -> float:
        factors, iterations = int(point["factors"]), int(point["iterations"])
        return als_work(*search.size(), factors, iterations, search.scored_users())

    dimensions = [
        Dimension("factors", configured.factors, step=2.0, low=8, high=512, integer=True, min_step=1.5),
        Dimension("regularization", options.als_regularization_start, step=10.0, low=1e-5, high=1e3),
        Dimension("iterations", configured.iterations, step=2.0, low=3, high=60, integer=True, min_step=1.5),
    ]
    if configured.algorithm == "als":
        dimensions.insert(0, Dimension("alpha", options.als_alpha_start, step=4.0, low=1e-3, high=1e4))
    result = search.run(
        objective,
        dimensions,
        kind=configured.algorithm,
        work=work,
        choices={"bm25": (float(configured.bm25), float(not configured.bm25))},
        first=first,
    )
    return result, params_at


def validation_split(matrix: sp.csr_matrix, *, seed: int) -> Split:
    """The per-user 80/20 split every candidate is fitted and scored on."""
    return holdout_split(matrix, test_fraction=0.2, seed=seed)


WEIGHTING_PROBE_FACTORS = 128  # EASE's rank when the weightings are compared (a fraction of its search's cost)
WEIGHTING_BUDGET_SHARE = 0.15  # of the search's budget, at most, before the last weighting is skipped


def weighting_choose(
    normalised: sp.csr_matrix,
    evaluate: Callable[[Any], npt.NDArray[np.float64]],
    options: TuningSettings,
    record: Callable[..., None],
    *,
    deadline: float,
) -> str:
    """How the learners read the summed weights (``interactions.WEIGHTINGS``): EASE at the search's
    starting λ and a rank of WEIGHTING_PROBE_FACTORS is fitted on each reading and scored on the
    validation users; another reading replaces the one chosen so far (raw first) only when its mean
    NDCG@10 is higher by more than twice the standard error of the paired differences. Weights that
    are all alike read the same every way: raw, without a fit. The reviewer's measurement that led
    here: ml-latest-small's positives with shop-like weights (views repeated, a purchase of 8 now
    and then, unrelated to relevance) scored test NDCG@10 0.176 raw, 0.235 log, 0.256 binary."""
    positive = normalised.data[normalised.data > 0]
    if not len(positive) or float(positive.max() - positive.min()) <= 1e-6 * float(positive.max()):
        return "raw"
    rank = max(1, min(WEIGHTING_PROBE_FACTORS, options.ease_factors, min(normalised.shape) - 1))
    per_user: dict[str, npt.NDArray[np.float64]] = {}
    for weighting in WEIGHTINGS:
        if per_user and time.monotonic() > deadline:
            break
        matrix = matrix_weighted(normalised, weighting, 1.0)
        unit = gram_diagonal_mean(matrix)
        params = LearnerParams(
            algorithm="ease", factors=rank, regularization=options.ease_lambda_start * unit, random_state=options.seed
        )
        per_user[weighting] = evaluate(fit(matrix, params, threads=options.threads))
        score = float(per_user[weighting].mean())
        record("ease", params, score, weighting=weighting, lambda_relative=options.ease_lambda_start, popularity=0.0)
    return str(earned_choice(per_user))  # raw first: the others in turn must earn the change


def learner_weights(matrix: sp.csr_matrix, params: LearnerParams) -> sp.csr_matrix:
    """The summed weights as the chosen learner reads them (``params.weighting``, in the units of the
    weights it was searched on)."""
    return matrix_weighted(matrix, params.weighting, params.weight_scale or weight_scale(matrix))


def learner_confidences(matrix: sp.csr_matrix, params: LearnerParams) -> sp.csr_matrix:
    """The matrix a chosen learner is fitted on: its weights as it reads them, then BM25 over the
    normalised weights when it asks for it (restated in raw units)."""
    matrix = learner_weights(matrix, params)
    if not params.bm25:
        return matrix
    scale = params.weight_scale or weight_scale(matrix)
    return (bm25_confidence((matrix / scale).tocsr()) * scale).tocsr()
