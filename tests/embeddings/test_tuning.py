"""The hyper-parameter search: interior optima, budgets, and invariance to the scale of weights."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.evaluation import Split, holdout_split, ranking_metrics, scores_recommender
from embeddings.learners import LearnerParams, fit
from embeddings.tuning import (
    Candidate,
    CostModel,
    Dimension,
    TuningSettings,
    collaborative_search,
    ease_work,
    gram_diagonal_mean,
    learner_confidences,
    log_search,
    paired_standard_error,
    serving_choose,
    user_sample,
    weight_scale,
)

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)


def _bowl(center: float):
    return lambda point: -((math.log(point["x"]) - math.log(center)) ** 2)


@pytest.mark.parametrize("start", [1e-3, 0.5, 2e4])
def test_search_widens_until_the_optimum_is_interior(start: float) -> None:
    # Given an optimum at 37, far from where the search starts
    result = log_search(_bowl(37.0), [Dimension("x", start, step=4.0, min_step=1.05)], max_evals=60)

    # Then it walks there and stops with worse points on both sides
    assert result.best.point["x"] == pytest.approx(37.0, rel=0.1)
    assert result.bracketed == {"x": True}


def test_search_reports_an_optimum_on_a_bound_as_not_bracketed() -> None:
    result = log_search(_bowl(1e6), [Dimension("x", 1.0, high=100.0)], max_evals=40)

    assert result.best.point["x"] == 100.0
    assert result.bracketed == {"x": False}


def test_search_stops_at_its_evaluation_budget_and_deadline() -> None:
    calls = []

    def slow(point: dict[str, float]) -> float:
        calls.append(point)
        time.sleep(0.02)
        return -point["x"]

    assert len(log_search(slow, [Dimension("x", 1.0)], max_evals=3).trials) == 3
    calls.clear()
    log_search(slow, [Dimension("x", 1.0)], deadline=time.monotonic() + 0.05, max_evals=1000)
    assert 1 <= len(calls) <= 5


def test_search_does_not_start_a_candidate_that_cannot_finish_before_the_deadline() -> None:
    # Given candidates whose time grows with x (0.03 s a unit) and a score that keeps rewarding larger x
    def slow(point: dict[str, float]) -> float:
        time.sleep(0.03 * point["x"])
        return point["x"]

    budget = 1.0
    dimension = Dimension("x", 4.0, step=2.0, low=1, high=64, integer=True, min_step=1.5)

    # When the search runs with a cost estimate learnt from the candidates it ran
    started = time.monotonic()
    result = log_search(slow, [dimension], deadline=started + budget, work=lambda point: point["x"])
    elapsed = time.monotonic() - started

    # Then x = 32 (0.96 s, due to end at ~1.8 s) is never started, and the budget holds
    assert [t.point["x"] for t in result.trials] == [4.0, 8.0, 16.0]
    assert result.skipped == [{"x": 32.0}]
    assert elapsed <= budget + 0.1


def test_a_kind_of_candidate_not_run_yet_is_estimated_from_the_others_with_a_margin() -> None:
    costs = CostModel(margin=2.0)
    assert costs.seconds("als", 100.0) is None

    costs.observe("ease", work=10.0, seconds=1.0)
    costs.observe("ease", work=10.0, seconds=3.0)  # the slowest rate seen is kept

    assert costs.seconds("ease", 20.0) == pytest.approx(6.0)
    assert costs.seconds("als", 20.0) == pytest.approx(12.0)


def test_search_tries_each_choice() -> None:
    result = log_search(
        lambda p: -abs(math.log(p["x"])) + p["flag"], [Dimension("x", 8.0)], choices={"flag": (0.0, 1.0)}
    )

    assert result.best.point == {"x": 1.0, "flag": 1.0}


def _planted(seed: int = 0, users: int = 300, items: int = 60, groups: int = 4) -> sp.csr_matrix:
    """Users in taste groups, each liking a random half of its group's items and a few others."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    group_items = np.array_split(rng.permutation(items), groups)
    for user in range(users):
        own = group_items[user % groups]
        liked = set(rng.choice(own, size=len(own) // 2, replace=False)) | set(rng.choice(items, size=2))
        rows += [user] * len(liked)
        cols += sorted(liked)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))


FAST = TuningSettings(budget_seconds=60, max_evals=12, eval_users=300, ease_factors=30)


def test_ease_search_lands_at_the_best_lambda_of_a_dense_grid() -> None:
    # Given a matrix whose best λ we find by brute force on a fine grid
    split = holdout_split(_planted(), seed=1)
    unit = gram_diagonal_mean(split.train)

    def ndcg(relative: float) -> float:
        params = LearnerParams(algorithm="ease", factors=30, regularization=relative * unit)
        return ranking_metrics(scores_recommender(fit(split.train, params).scores, split.train), split)["ndcg@10"]

    grid = {r: ndcg(r) for r in np.geomspace(1e-3, 1e3, 25)}
    best_on_grid = max(grid.values())

    # When the search runs from its default start (λ alone, as the grid)
    options = replace(FAST, ease_popularity=False)
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=30), options=options)

    # Then it finds an interior optimum as good as the grid's (within noise of one grid step)
    assert outcome.bracketed["ease"] == {"lambda": True}
    assert outcome.score >= best_on_grid - 0.01


def _skewed(seed: int, users: int = 600, items: int = 240, groups: int = 6) -> sp.csr_matrix:
    """Taste groups whose items differ in appeal (Pareto): each user likes 3-8 of their group's
    items, drawn in proportion to appeal, so an unseen popular item is the likelier test item."""
    rng = np.random.default_rng(seed)
    group, appeal = rng.integers(0, groups, items), rng.pareto(1.5, items) + 1.0
    rows, cols = [], []
    for user in range(users):
        own = np.flatnonzero(group == user % groups)
        size = min(len(own), int(rng.integers(3, 9)))
        liked = rng.choice(own, size=size, replace=False, p=appeal[own] / appeal[own].sum())
        rows += [user] * size
        cols += sorted(liked)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ease_search_raises_popular_items_where_appeal_decides_the_held_out_items(seed: int) -> None:
    # Given groups whose liked items are drawn by appeal, and a small profile per user
    split = holdout_split(_skewed(seed), seed=1)
    options = TuningSettings(budget_seconds=60, max_evals=20, eval_users=300, ease_factors=30)

    # When EASE is searched
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=30), options=options)

    # Then it picks a popularity factor above 1 (β > 0), and that beats every candidate without one
    without = max(t["ndcg@10"] for t in outcome.tried if t["popularity"] == 0.0)
    assert outcome.params.popularity > 0.2
    assert outcome.score > without + 0.005


def test_ease_search_keeps_popularity_neutral_where_every_item_of_a_group_is_alike() -> None:
    # Given groups whose members like a uniformly random half of the group's items
    split = holdout_split(_planted(), seed=1)

    # When EASE is searched
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=30), options=FAST)

    # Then the chosen popularity exponent stays near 0
    assert abs(outcome.params.popularity) <= 0.2


@settings(max_examples=5, deadline=None)
@given(st.sampled_from([0.01, 0.2, 5.0, 37.0, 1000.0]))
def test_tuning_is_invariant_to_scaling_every_weight(factor: float) -> None:
    # Given the same interactions with every weight multiplied by a constant
    base = _planted(seed=2)
    base.data = base.data * np.random.default_rng(0).uniform(1, 3, base.nnz).astype(np.float32)
    scaled = (base * factor).astype(np.float32).tocsr()
    options = TuningSettings(budget_seconds=60, max_evals=8, eval_users=300)
    configured = LearnerParams(algorithm="ease", factors=20)

    # When each is searched
    plain = collaborative_search(holdout_split(base, seed=3), configured, options=options)
    other = collaborative_search(holdout_split(scaled, seed=3), configured, options=options)

    # Then the same candidates are tried and score the same, and λ differs only by the scale²
    assert [t["lambda_relative"] for t in plain.tried] == [t["lambda_relative"] for t in other.tried]
    assert [t["popularity"] for t in plain.tried] == [t["popularity"] for t in other.tried]
    assert other.params.popularity == plain.params.popularity
    assert [t["ndcg@10"] for t in plain.tried] == pytest.approx([t["ndcg@10"] for t in other.tried], abs=1e-4)
    assert other.params.regularization == pytest.approx(plain.params.regularization * factor**2, rel=1e-4)


@pytest.mark.parametrize("factor", [0.1, 5.0])
def test_als_alpha_found_on_normalised_weights_gives_the_same_confidences_on_raw_ones(factor: float) -> None:
    # Given ALS parameters found on weights / their mean, restated for the raw weights
    raw = (_planted(seed=5) * factor).tocsr()
    options = TuningSettings(budget_seconds=60, max_evals=3, eval_users=100, ease=False)
    outcome = collaborative_search(holdout_split(raw, seed=1), LearnerParams(factors=4, iterations=2), options=options)
    relative_alpha = next(t["alpha"] for t in outcome.tried if t["ndcg@10"] == round(outcome.score, 5))

    # Then alpha × raw weight is what the search scored: relative alpha × normalised weight
    assert outcome.params.alpha * factor == pytest.approx(relative_alpha, rel=1e-4)
    assert outcome.params.weight_scale == pytest.approx(factor, rel=1e-5)


def test_chosen_bm25_learner_sees_the_same_confidences_on_raw_weights() -> None:
    matrix = _planted(seed=4) * 7.0
    params = LearnerParams(bm25=True, weight_scale=weight_scale(matrix))

    confidences = learner_confidences(matrix.tocsr(), params)
    unit = learner_confidences((matrix / 7.0).tocsr(), LearnerParams(bm25=True, weight_scale=1.0))

    assert np.allclose(confidences.toarray(), unit.toarray() * 7.0, rtol=1e-5)


def test_a_zero_budget_starts_no_candidate_and_keeps_the_configured_learner() -> None:
    # Given no time at all for the search
    split = holdout_split(_planted(seed=6), seed=1)
    options = TuningSettings(budget_seconds=0, ease_factors=20, eval_users=100)
    configured = LearnerParams(factors=8, iterations=3)

    # When EASE and the configured ALS are searched
    outcome = collaborative_search(split, configured, options=options)

    # Then not even the first candidate started (its time is estimated from its size), and the
    # configured learner is chosen as it is
    assert outcome.tried == [] and outcome.factors is None
    assert outcome.params == configured
    assert outcome.skipped >= 2  # EASE's first point and ALS's
    assert outcome.bracketed["als"] == {"alpha": False, "factors": False, "regularization": False, "iterations": False}


class _FakeClock:
    """time.monotonic for the search, advanced only by the fake candidates' seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _timed_by_their_size(monkeypatch, rates: dict[str, float]) -> _FakeClock:
    """Candidates take exactly ``rates[kind]`` × their work (ease_work / als_work) on a fake clock,
    the machine runs at the reference speed, and the search's first estimates are those rates."""
    from embeddings import tuning

    clock = _FakeClock()
    real_fit = tuning.fit

    def fit(matrix, params, *, svd_cache=None, **kwargs):
        users, items = matrix.shape
        if params.algorithm == "ease":
            rank = min(params.factors, min(matrix.shape) - 1)
            fresh = svd_cache is None or params.factors not in svd_cache
            work = tuning.ease_work(users, items, matrix.nnz, rank, min(100, users), with_svd=fresh)
        else:
            work = tuning.als_work(users, items, matrix.nnz, params.factors, params.iterations, min(100, users))
        clock.now += rates[params.algorithm] * work
        return real_fit(matrix, params, svd_cache=svd_cache, **kwargs)

    monkeypatch.setattr(tuning, "fit", fit)
    monkeypatch.setattr(tuning.time, "monotonic", clock)
    monkeypatch.setattr(tuning, "machine_slowdown", lambda: 1.0)
    return clock


def test_no_candidate_ends_past_the_budget_on_a_fake_clock_the_first_one_included(monkeypatch) -> None:
    # Given candidates whose seconds follow their size, and a budget in which EASE's first one
    # (its SVD: 1.5x its share of the budget) cannot end
    split = holdout_split(_planted(seed=6), seed=1)
    users, items = split.train.shape
    first = ease_work(users, items, split.train.nnz, 20, 100, with_svd=True)
    rates = {"ease": 15.0 / first, "als": 2e-6}
    clock = _timed_by_their_size(monkeypatch, rates)
    options = TuningSettings(
        budget_seconds=20, ease_factors=20, ease_min_factors=20, eval_users=100, first_rates=tuple(rates.items())
    )
    started = clock.now

    outcome = collaborative_search(split, LearnerParams(factors=8, iterations=3), options=options)

    # Then EASE never started, ALS's candidates ran, and the last one ended within the budget
    assert [t["algorithm"] for t in outcome.tried][:1] == ["als"] and {"ease"} - {t["algorithm"] for t in outcome.tried}
    assert outcome.skipped >= 1 and outcome.params.algorithm == "als"
    assert clock.now - started <= options.budget_seconds


def test_the_ease_rank_is_halved_until_its_first_candidate_fits_its_share(monkeypatch) -> None:
    # Given an EASE share of 10 s in which the first candidate fits at rank 10 but not at 40 or 20
    split = holdout_split(_planted(seed=6), seed=1)
    users, items = split.train.shape
    work = {rank: ease_work(users, items, split.train.nnz, rank, 100, with_svd=True) for rank in (10, 20, 40)}
    rate = 10.0 / (work[10] + work[20]) * 2  # rank 20's estimate is above 10 s, rank 10's below
    assert rate * work[20] > 10.0 >= rate * work[10]
    clock = _timed_by_their_size(monkeypatch, {"ease": rate})
    options = TuningSettings(
        budget_seconds=10,
        max_evals=3,
        ease_factors=40,
        ease_min_factors=5,
        eval_users=100,
        first_rates=(("ease", rate),),
    )
    started = clock.now

    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=40), options=options)

    # Then EASE ran at rank 10, and the budget held
    assert {t["factors"] for t in outcome.tried} == {10}
    assert outcome.params.factors == 10
    assert clock.now - started <= options.budget_seconds


def _split_of(matrix: sp.csr_matrix) -> Split:
    return holdout_split(matrix, seed=1)


def test_user_sample_is_deterministic_and_capped_by_interactions() -> None:
    split = _split_of(_planted(seed=7, users=400))
    cap = split.train.nnz // 3

    first, again = user_sample(split, cap, seed=5), user_sample(split, cap, seed=5)

    assert first.train.nnz <= cap and first.train.nnz > cap * 0.9  # users are taken until the next one overflows
    assert (first.train != again.train).nnz == 0 and (first.test != again.test).nnz == 0
    assert first.train.shape[1] == split.train.shape[1]  # every item column is kept
    # the sampled users' rows, train and test, are their rows in the split
    rows = {tuple(r.indices) for r in first.train}
    assert rows <= {tuple(r.indices) for r in split.train}
    assert first.test.nnz == sum(split.test[u].nnz for u in _rows_in(split.train, first.train))
    assert user_sample(split, split.train.nnz, seed=5) is split
    assert user_sample(split, 0, seed=5) is split


def _rows_in(whole: sp.csr_matrix, sample: sp.csr_matrix) -> list[int]:
    """The row of ``whole`` each row of ``sample`` came from (rows are distinct in these matrices)."""
    index = {(tuple(r.indices), tuple(np.round(r.data, 5))): u for u, r in enumerate(whole)}
    return [index[(tuple(r.indices), tuple(np.round(r.data, 5)))] for r in sample]


def test_a_different_seed_samples_different_users() -> None:
    split = _split_of(_planted(seed=7, users=400))
    cap = split.train.nnz // 3

    one, other = user_sample(split, cap, seed=5), user_sample(split, cap, seed=6)

    assert set(_rows_in(split.train, one.train)) != set(_rows_in(split.train, other.train))


@settings(max_examples=3, deadline=None)
@given(st.sampled_from([0.1, 5.0, 300.0]))
def test_tuning_on_a_sample_is_invariant_to_scaling_every_weight(factor: float) -> None:
    # Given the same interactions with every weight multiplied by a constant, searched on a user sample
    base = _planted(seed=8, users=600)
    base.data = base.data * np.random.default_rng(1).uniform(1, 3, base.nnz).astype(np.float32)
    scaled = (base * factor).astype(np.float32).tocsr()
    options = TuningSettings(budget_seconds=60, max_evals=8, eval_users=200, sample_interactions=base.nnz // 3)
    configured = LearnerParams(algorithm="ease", factors=20)  # ALS's float32 fits differ in the last bits

    plain = collaborative_search(holdout_split(base, seed=3), configured, options=options)
    other = collaborative_search(holdout_split(scaled, seed=3), configured, options=options)

    # Then the sample, the candidates and their scores are the same, and the restated λ differs by the scale²
    assert plain.sample == other.sample and plain.sample["fraction"] < 0.4
    assert [t["lambda_relative"] for t in plain.tried] == [t["lambda_relative"] for t in other.tried]
    assert [t["popularity"] for t in plain.tried] == [t["popularity"] for t in other.tried]
    assert other.params.popularity == plain.params.popularity
    assert [t["ndcg@10"] for t in plain.tried] == pytest.approx([t["ndcg@10"] for t in other.tried], abs=1e-4)
    assert other.params.regularization == pytest.approx(plain.params.regularization * factor**2, rel=1e-4)


def test_parameters_found_on_a_sample_are_restated_for_the_whole_split() -> None:
    # Given a search of EASE alone on a third of the users
    split = holdout_split(_planted(seed=9, users=900), seed=2)
    options = TuningSettings(budget_seconds=60, max_evals=6, eval_users=200, sample_interactions=split.train.nnz // 3)
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=20), options=options)

    # Then its λ is the best relative λ × the sample's unit, grown by how much larger the whole Gram matrix is
    sample = user_sample(split, options.sample_interactions, seed=options.seed)
    traces = (split.train.data @ split.train.data) / (sample.train.data @ sample.train.data)
    relative = outcome.params.regularization / (gram_diagonal_mean(sample.train) * traces)
    best = max(t["ndcg@10"] for t in outcome.tried)
    assert 2.5 < traces < 3.5
    assert any(
        t["ndcg@10"] == best and t["lambda_relative"] == pytest.approx(relative, rel=1e-3) for t in outcome.tried
    )


def test_a_user_with_more_interactions_than_the_sample_never_empties_it() -> None:
    # Given one user who used every item, more than the whole sample may hold
    matrix = _planted(seed=10, users=200).tolil()
    matrix[0, :] = 1.0
    split = _split_of(matrix.tocsr())
    cap = 40

    for seed in range(20):  # whichever place the random order gives that user
        sample = user_sample(split, cap, seed=seed)
        assert 0 < sample.train.nnz <= cap
        assert sample.train.getnnz(axis=1).max() < split.train[0].nnz


def test_the_speed_probe_runs_on_one_blas_thread_as_the_worker_does(monkeypatch) -> None:
    # A process with OpenBLAS' default threads read 6-175x under load on 2 cores (threads spinning
    # against each other) and halved EASE's rank to its floor; the worker runs one BLAS thread.
    from threadpoolctl import threadpool_info, threadpool_limits

    threads: list[int] = []
    qr = np.linalg.qr

    def recording_qr(a):  # type: ignore[no-untyped-def]
        threads.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return qr(a)

    monkeypatch.setattr(np.linalg, "qr", recording_qr)
    from embeddings import tuning

    with threadpool_limits(2, "blas"):  # a process left with more than one
        assert tuning.machine_slowdown() >= 0.25
    assert threads and set(threads) == {1}


def _candidate(dimensions: int, per_user: np.ndarray, *, algorithm: str = "ease", rank: int = 400) -> Candidate:
    """An EASE candidate cut from a rank-``rank`` SVD (or another learner at ``dimensions`` factors)."""
    svd_rank = rank if algorithm == "ease" and dimensions < rank else None
    params = LearnerParams(algorithm=algorithm, factors=dimensions, svd_rank=svd_rank)
    return Candidate(params, dimensions, float(per_user.mean()), per_user)


def test_a_smaller_candidate_within_one_standard_error_of_the_best_is_served() -> None:
    # Given a 400-d best and smaller candidates whose paired differences from it are known
    rng = np.random.default_rng(0)
    best = rng.uniform(0, 1, 2_000)
    noise = rng.normal(0, 0.2, 2_000)
    close = best - 0.5 * 0.2 / np.sqrt(2_000) + noise - noise.mean()  # half a standard error below
    far = best - 3 * 0.2 / np.sqrt(2_000) + noise - noise.mean()  # three standard errors below
    candidates = [_candidate(400, best), _candidate(64, far), _candidate(16, close)]
    assert paired_standard_error(best, close) == pytest.approx(0.2 / np.sqrt(2_000), rel=0.05)

    # Then the smallest one within one standard error is served, not the one three below
    assert serving_choose(candidates, tolerance=1.0).dimensions == 16
    assert serving_choose([candidates[0], candidates[1]], tolerance=1.0).dimensions == 400
    # And a tolerance of 0 serves the best-scoring one
    assert serving_choose(candidates, tolerance=0.0).dimensions == 400


def test_a_smaller_candidate_that_scores_as_well_is_served_even_with_no_tolerance() -> None:
    same = np.random.default_rng(1).uniform(0, 1, 500)
    # Equal scores: the first of the best is the 64-d one, and the 32-d one scores as well
    candidates = [_candidate(64, same), _candidate(32, same.copy()), _candidate(400, same - 0.01)]
    assert serving_choose(candidates, tolerance=0.0).dimensions == 32
    # A larger candidate is never preferred to the best, however close; nothing: None
    assert serving_choose([_candidate(16, same), _candidate(64, same)], tolerance=5.0).dimensions == 16
    assert serving_choose([], tolerance=1.0) is None


def test_an_als_search_serves_its_best_candidate_whatever_the_tolerance_and_hands_over_its_factors() -> None:
    # Given ALS candidates of several sizes on planted taste groups (a few dimensions suffice)
    split = holdout_split(_planted(seed=7, groups=4), seed=1)
    options = TuningSettings(budget_seconds=60, max_evals=8, eval_users=300, ease=False)
    configured = LearnerParams(factors=32, iterations=5)

    # When any tolerance is allowed, and when none is
    loose = collaborative_search(split, configured, options=replace(options, serving_tolerance=1e9))
    strict = collaborative_search(split, configured, options=replace(options, serving_tolerance=0.0))

    # Then both serve the best-scoring candidate with its own factors: fewer ALS factors are another
    # fit (the search already chose them), not the same model cut to fewer dimensions
    assert len({int(t["factors"]) for t in loose.tried}) > 1
    for outcome in (loose, strict):
        assert outcome.score == pytest.approx(max(t["ndcg@10"] for t in outcome.tried), abs=1e-5)
        assert outcome.factors.dimensions == outcome.params.factors and outcome.cheaper == {}


def _differing(seed: int, users: int = 2_000) -> tuple[np.ndarray, np.ndarray, float]:
    """Two per-user score arrays and the standard error of their paired difference (noise 0.2)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, users)
    noise = rng.normal(0, 0.2, users)
    return base, noise - noise.mean(), 0.2 / math.sqrt(users)


@pytest.mark.parametrize(("lead", "served"), [(0.5, "ease"), (0.9, "ease"), (1.3, "als"), (3.0, "als")])
def test_als_replaces_ease_only_when_it_leads_by_more_than_the_switch_margin(lead: float, served: str) -> None:
    # Given EASE's best and an ALS candidate scoring ``lead`` standard errors above it
    base, noise, error = _differing(4)
    ease = _candidate(400, base)
    als = _candidate(32, base + lead * error + noise, algorithm="als")
    assert paired_standard_error(als.per_user, ease.per_user) == pytest.approx(error, rel=0.05)

    # Then with a margin of one standard error, ALS is served only past it; with no margin, the best
    chosen = serving_choose([ease, als], tolerance=1.0, switch_margin=1.0)
    assert chosen.params.algorithm == served
    assert serving_choose([ease, als], tolerance=1.0, switch_margin=0.0) is als
    # And without an EASE candidate (a catalogue past RECSYS_EASE_MAX_ITEMS) ALS is served as it is
    assert serving_choose([als], tolerance=1.0, switch_margin=1.0) is als


def test_ease_kept_over_a_close_als_is_then_cut_to_its_smallest_rank_as_good() -> None:
    # Given EASE 400-d, its rank-100 cut half a standard error below, and ALS 16-d just above EASE
    base, noise, error = _differing(5)
    ease = _candidate(400, base)
    cut = _candidate(100, base - 0.5 * error + noise)
    als = _candidate(16, base + 0.3 * error + noise[::-1], algorithm="als")

    # Then EASE is kept (ALS's lead is under the margin) and served at rank 100; ALS's 16 dimensions
    # do not count as a cut of EASE
    chosen = serving_choose([ease, cut, als], tolerance=1.0, switch_margin=1.0)
    assert chosen is cut


def test_a_cut_is_of_the_same_svd_lambda_and_beta_only() -> None:
    base, noise, error = _differing(6)
    best = _candidate(400, base)
    # The same rank from another SVD (rank 200), or another λ: not a cut of the best
    other_svd = _candidate(100, base - 0.1 * error + noise, rank=200)
    other_lambda = Candidate(
        replace(best.params, factors=50, svd_rank=400, regularization=99.0), 50, other_svd.score, other_svd.per_user
    )
    assert serving_choose([best, other_svd, other_lambda], tolerance=1.0) is best


def test_the_factors_handed_over_are_the_chosen_learners_when_two_learners_share_a_dimension_count() -> None:
    # Given EASE at rank 64 and a better-scoring ALS with 64 factors that does not lead by the margin
    from embeddings.tuning import _Candidates

    split = holdout_split(_planted(seed=11), seed=1)
    candidates = _Candidates()
    ease_factors = fit(split.train, LearnerParams(algorithm="ease", factors=64, regularization=10.0))
    als_factors = fit(split.train, LearnerParams(algorithm="als", factors=64, iterations=3))
    base, noise, error = _differing(7, users=300)
    candidates.offer(LearnerParams(algorithm="ease", factors=64, regularization=10.0), base, ease_factors)
    candidates.offer(LearnerParams(algorithm="als", factors=64, iterations=3), base + 0.2 * error + noise, als_factors)

    # Then EASE is chosen, and its own factors are handed over (not ALS's of the same size)
    chosen = serving_choose(candidates.all, tolerance=1.0, switch_margin=1.0)
    assert chosen.params.algorithm == "ease"
    assert candidates.factors_of(chosen) is ease_factors
    assert candidates.cheaper(chosen)["best_dimensions"] == 64


def test_ease_is_tried_at_smaller_ranks_from_its_one_svd_and_served_at_the_smallest_as_good(monkeypatch) -> None:
    # Given four planted taste groups (a handful of dimensions hold the model) and EASE at rank 30
    import embeddings.learners as learners

    svds = []
    truncated_svd = learners.truncated_svd
    monkeypatch.setattr(learners, "truncated_svd", lambda *a, **k: svds.append(a) or truncated_svd(*a, **k))
    split = holdout_split(_planted(seed=8, users=400, groups=4), seed=1)
    options = replace(FAST, ease_popularity=False, ease_min_serving_factors=4)

    # When EASE is searched
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=30), options=options)

    # Then its best λ was also tried at ranks 15 and 7, without another SVD, and a smaller rank
    # than 30 is served with its own factors
    ranks = [int(t["factors"]) for t in outcome.tried]
    assert ranks[-2:] == [15, 7] and set(ranks[:-2]) == {30}
    assert len(svds) == 1
    assert outcome.params.factors < 30 and outcome.factors.dimensions == outcome.params.factors
    assert outcome.cheaper["best_dimensions"] in (30.0, 15.0)


def test_a_rank_that_scores_worse_does_not_end_the_halving(monkeypatch) -> None:
    # Given scores that are not monotonic in the rank: 12 dips, 6 is the best of all, 3 is poor
    import embeddings.tuning as tuning

    base = np.random.default_rng(4).uniform(0, 1, 300)
    by_rank = {24: base, 12: base - 0.02, 6: base + 0.01, 3: base - 0.3}
    monkeypatch.setattr(tuning, "_scorer", lambda *_: lambda factors: by_rank[factors.dimensions])
    split = holdout_split(_planted(seed=9, users=300, items=60), seed=1)
    options = replace(FAST, ease_popularity=False, ease_min_serving_factors=3, max_evals=4)

    # When EASE is searched at rank 24
    outcome = collaborative_search(split, LearnerParams(algorithm="ease", factors=24), options=options)

    # Then every rank down to the floor was tried (before: the halving stopped at 12), and rank 6 is
    # served
    assert [int(t["factors"]) for t in outcome.tried if int(t["factors"]) < 24] == [12, 6, 3]
    assert outcome.params.factors == 6 and outcome.factors.dimensions == 6


def test_only_each_sizes_best_is_weighed_so_a_worse_sibling_cannot_pass_on_a_wider_error() -> None:
    # Given a 64-d best, a 32-d candidate just below it with a narrow error (outside one standard
    # error), and a worse 32-d one whose differences vary so much that it alone would pass
    rng = np.random.default_rng(3)
    best = rng.uniform(0, 1, 1_000)
    close = best - 0.004 + rng.normal(0, 0.001, 1_000)
    noisy = best - 0.006 + rng.normal(0, 0.3, 1_000)
    noisy += (best.mean() - 0.006) - noisy.mean()
    candidates = [_candidate(64, best), _candidate(32, close), _candidate(32, noisy)]
    assert 0.006 <= paired_standard_error(best, noisy)  # alone, it is within one standard error

    # Then the 32-d size is judged by its best candidate, which is outside: the 64-d one is served
    assert serving_choose(candidates, tolerance=1.0).dimensions == 64


def test_an_ease_rank_cut_from_a_larger_svd_is_refitted_from_the_same_cut() -> None:
    # Given a rank probe's parameters (rank 8 cut from the rank-30 SVD the search computed)
    from embeddings.learners import fit_ease, truncated_svd

    matrix = _planted(seed=10).astype(np.float32)
    params = LearnerParams(algorithm="ease", factors=8, svd_rank=30, regularization=20.0)

    # When the chosen learner is fitted again, as the final fit does
    refit = fit(matrix, params)

    # Then it is the model the probe scored, not one from a fresh rank-8 SVD
    cut = fit_ease(matrix, factors=8, regularization=20.0, svd=truncated_svd(matrix, 30, seed=42).leading(8))
    assert refit.dimensions == 8
    assert np.allclose(refit.scores(np.arange(20)), cut.scores(np.arange(20)), atol=1e-4)
    with pytest.raises(ValueError, match="svd_rank"):
        LearnerParams(algorithm="ease", factors=8, svd_rank=4)


@pytest.mark.parametrize("field", ["serving_tolerance", "switch_margin"])
@pytest.mark.parametrize("value", [-0.5, math.inf])
def test_the_choice_margins_are_finite_and_not_negative(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TuningSettings(**{field: value})


def test_the_search_reads_heavy_weights_unrelated_to_taste_as_they_serve_best() -> None:
    # Given planted tastes whose summed weights are noise: repeats and an 8 now and then (a purchase
    # among views), unrelated to which items a user likes
    base = _planted(seed=4, users=400)
    rng = np.random.default_rng(1)
    noisy = base.copy()
    noisy.data = (rng.geometric(0.5, noisy.nnz) + np.where(rng.random(noisy.nnz) < 0.1, 8.0, 0.0)).astype(np.float32)
    options = TuningSettings(budget_seconds=60, max_evals=6, eval_users=400, ease_factors=30)
    configured = LearnerParams(algorithm="ease", factors=30)

    outcome = collaborative_search(holdout_split(noisy, seed=2), configured, options=options)
    alike = collaborative_search(holdout_split(base, seed=2), configured, options=options)

    # Then it reads them flattened (before: raw, the sum of the noise), and weights all alike are not probed
    probes = {t["weighting"]: t["ndcg@10"] for t in outcome.tried if "weighting" in t}
    assert outcome.params.weighting in ("log", "binary") and probes[outcome.params.weighting] > probes["raw"]
    assert alike.params.weighting == "raw" and not [t for t in alike.tried if "weighting" in t]


def test_a_learner_and_its_fold_in_read_the_weights_the_same_way() -> None:
    from embeddings.interactions import matrix_weighted, weights_transform

    weights = np.array([1.0, 2.0, 9.0, -3.0], np.float32)
    for weighting, expected in (("raw", weights), ("binary", [2.0, 2.0, 2.0, -2.0]), ("log", None)):
        read = weights_transform(weights, weighting, 2.0)
        if expected is not None:
            assert read.tolist() == pytest.approx(list(expected))
        matrix = sp.csr_matrix(weights.reshape(1, -1))
        assert matrix_weighted(matrix, weighting, 2.0).toarray().ravel().tolist() == pytest.approx(read.tolist())
    log = weights_transform(weights, "log", 2.0)
    assert log[1] == pytest.approx(2.0)  # the scale reads as itself
    assert log[0] < log[1] < log[2] < 9.0 and log[3] < 0  # order and sign kept, large sums flattened


def test_a_users_fold_in_reads_their_summed_weights_as_training_read_them() -> None:
    # EASE's user vector is Σ weight × item input vector: with binary weights a view counted thirty times
    # counts once, in the trained users and in the folded-in ones alike (before: raw at fold-in)
    from embeddings.fold_in import FoldIn
    from embeddings.models import ModelVersion

    version = ModelVersion(algorithm="ease", params={"weighting": "binary", "weight_scale": 2.0})
    rows = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)

    vector = FoldIn(version).vector(np.array([3, 5]), np.array([30.0, 1.0], np.float32), np.array([3, 5]), rows)

    assert vector is not None and vector.tolist() == pytest.approx([2.0, 2.0])
