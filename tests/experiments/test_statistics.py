"""Experiment statistics: delta-method intervals, the always-valid test under peeking, simulated traffic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments.simulation import Population
from experiments.statistics import (
    Comparison,
    PriorLook,
    UserTotals,
    VariantCounts,
    comparison_alpha,
    ctr_estimate,
    fixed_horizon_p_value,
    msprt_power,
    rate_compare,
    rate_estimate,
    users_required,
    variant_compare,
)

pytestmark = pytest.mark.unit  # pure: no service (make test-unit)

POPULATION = Population()  # mean CTR 5%, Beta propensities (a + b = 10), heavy-tailed impressions per user


def counts(impressions: list[int] | np.ndarray, clicks: list[int] | np.ndarray) -> VariantCounts:
    return VariantCounts(impressions=np.asarray(impressions, np.int64), clicks=np.asarray(clicks, np.int64))


def simulated(users: int, *, lift: float = 0.0, seed: int) -> VariantCounts:
    impressions, clicks = POPULATION.traffic(users, lift=lift, rng=np.random.default_rng(seed))
    return VariantCounts(impressions=impressions, clicks=clicks)


def monitored(control: VariantCounts, treatment: VariantCounts, *, looks: int, **options: float) -> list[Comparison]:
    """The comparison at each of ``looks`` evenly spaced peeks, each given the one before (as the page does)."""
    history: list[Comparison] = []
    for users in np.linspace(len(control.clicks) // looks, len(control.clicks), looks).astype(int):
        history.append(
            variant_compare(
                control=counts(control.impressions[:users], control.clicks[:users]),
                treatment=counts(treatment.impressions[:users], treatment.clicks[:users]),
                looks=history[-1:],
                **options,
            )
        )
    return history


def all_floats(comparison: Comparison) -> list[float]:
    values: list[float] = [comparison.ctr, comparison.control_ctr, comparison.difference]
    values += [*comparison.ctr_interval, *comparison.control_interval, *comparison.difference_interval]
    return values + [v for v in (comparison.relative_difference, comparison.p_value) if v is not None]


# Estimates and intervals


def test_ctr_is_total_clicks_over_total_impressions_not_a_mean_of_user_ctrs():
    ctr, (low, high) = ctr_estimate(counts([1, 9], [1, 0]))

    assert ctr == pytest.approx(0.1)  # the users' own CTRs average 0.5
    assert 0 <= low < ctr < high <= 1


def test_delta_method_variance_matches_the_ratio_formula_of_deng_et_al():
    rng = np.random.default_rng(7)
    impressions = rng.integers(1, 30, 200)
    clicks = rng.binomial(impressions, rng.beta(1, 9, 200))
    x, y = clicks.astype(float), impressions.astype(float)
    r = x.mean() / y.mean()
    covariance = np.cov(x, y)  # ddof = 1
    variance = (covariance[0, 0] - 2 * r * covariance[0, 1] + r * r * covariance[1, 1]) / (len(x) * y.mean() ** 2)

    rate, (low, high) = rate_estimate(UserTotals(numerators=clicks, denominators=impressions), alpha=0.05)

    assert rate == pytest.approx(r)
    assert (high - low) / 2 == pytest.approx(stats.norm.ppf(0.975) * math.sqrt(variance))


def test_clustered_users_widen_the_interval_beyond_the_binomial_one():
    # Same 1,000 impressions and 100 clicks; in the second, whole users click everything or nothing.
    spread = counts([10] * 100, [1] * 100)
    clustered = counts([10] * 100, [10] * 10 + [0] * 90)

    _, (spread_low, spread_high) = ctr_estimate(spread)
    _, (clustered_low, clustered_high) = ctr_estimate(clustered)

    assert clustered_high - clustered_low > 2.5 * (spread_high - spread_low)


def test_delta_method_interval_covers_the_true_ctr_95_percent_of_the_time_where_the_binomial_one_does_not():
    draws, users = 1000, 1000
    impressions, clicks = POPULATION.traffic((draws, users), rng=np.random.default_rng(11))
    truth = POPULATION.true_ctr()

    covered = binomial_covered = 0
    for draw in range(draws):
        ctr, (low, high) = ctr_estimate(counts(impressions[draw], clicks[draw]))
        covered += low <= truth <= high
        half = stats.norm.ppf(0.975) * math.sqrt(ctr * (1 - ctr) / impressions[draw].sum())
        binomial_covered += ctr - half <= truth <= ctr + half

    # 1,000 draws estimate a 95% coverage with a standard error of 0.7 points: allow 3 of them
    # (bench/ab_simulation.py measures 94–95% over many more draws on this skewed population).
    assert abs(covered / draws - 0.95) <= 0.021
    assert binomial_covered / draws < 0.85  # treating impressions as independent is overconfident


def test_zero_clicks_give_a_non_degenerate_interval_inside_zero_one():
    ctr, (low, high) = ctr_estimate(counts([5] * 50, [0] * 50))

    assert ctr == 0.0
    assert low == 0.0
    assert 0.0 < high < 0.2


def test_no_impressions_give_ctr_zero_with_the_uninformative_interval():
    assert ctr_estimate(counts([], [])) == (0.0, (0.0, 1.0))
    assert ctr_estimate(counts([0, 0], [0, 0])) == (0.0, (0.0, 1.0))


def test_more_clicks_than_impressions_or_mismatched_arrays_are_refused():
    with pytest.raises(ValueError, match="clicks ≤ impressions"):
        counts([1, 2], [2, 0])
    with pytest.raises(ValueError, match="same length"):
        counts([1, 2], [0])
    with pytest.raises(ValueError, match="alpha"):
        ctr_estimate(counts([1], [0]), alpha=1.5)


# The comparison: guards


def test_fewer_than_100_users_in_a_variant_give_no_p_value_and_say_why():
    comparison = variant_compare(control=simulated(5000, seed=1), treatment=simulated(99, lift=1.0, seed=2))

    assert comparison.p_value is None
    assert comparison.significant is False
    assert "too few users in the treatment" in (comparison.reason or "")


def test_zero_clicks_in_a_variant_give_no_p_value_even_with_many_users():
    comparison = variant_compare(control=simulated(5000, seed=1), treatment=counts([3] * 5000, [0] * 5000))

    assert comparison.p_value is None
    assert comparison.significant is False
    assert "no click" in (comparison.reason or "")
    assert all(math.isfinite(value) for value in all_floats(comparison))


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (counts([], []), counts([], [])),
        (counts([0] * 200, [0] * 200), counts([0] * 200, [0] * 200)),
        (counts([4] * 200, [1] * 200), counts([4] * 200, [1] * 200)),  # no variance at all
        (counts([1], [1]), counts([1], [0])),
    ],
    ids=["no users", "no impressions", "identical users", "one user each"],
)
def test_degenerate_traffic_never_gives_nan_or_significance(control, treatment):
    comparison = variant_compare(control=control, treatment=treatment)

    assert comparison.significant is False
    assert comparison.p_value is None
    assert comparison.reason
    assert all(math.isfinite(value) for value in all_floats(comparison))


# The comparison: the sequential test


def test_a_truly_better_variant_b_is_reported_better_with_p_below_005_after_the_simulated_traffic():
    # B's users click 15% more (relative); 20,000 users per variant, the page checked 20 times.
    control, treatment = simulated(20_000, seed=21), simulated(20_000, lift=0.15, seed=22)
    true_difference = POPULATION.true_ctr(lift=0.15) - POPULATION.true_ctr()

    final = monitored(control, treatment, looks=20)[-1]

    assert final.significant is True
    assert final.p_value is not None and final.p_value < 0.05
    assert final.difference > 0 and final.difference_interval[0] > 0
    assert final.difference_interval[0] <= true_difference <= final.difference_interval[1]
    assert final.ctr > final.control_ctr


def test_aa_tests_watched_at_20_looks_stay_insignificant_where_the_naive_test_would_not():
    # 400 A/A experiments of 2,000 users per variant, each checked at 20 looks (100, 200, ... users).
    runs, users, looks = 400, 2000, 20
    rng = np.random.default_rng(2026)
    a_impressions, a_clicks = POPULATION.traffic((runs, users), rng=rng)
    b_impressions, b_clicks = POPULATION.traffic((runs, users), rng=rng)

    sequential = naive = 0
    for run in range(runs):
        control, treatment = counts(a_impressions[run], a_clicks[run]), counts(b_impressions[run], b_clicks[run])
        history = monitored(control, treatment, looks=looks)
        sequential += any(look.significant for look in history)
        naive += any(
            (
                p := fixed_horizon_p_value(
                    control=UserTotals(numerators=a_clicks[run, :n], denominators=a_impressions[run, :n]),
                    treatment=UserTotals(numerators=b_clicks[run, :n], denominators=b_impressions[run, :n]),
                )
            )
            is not None
            and p < 0.05
            for n in np.linspace(users // looks, users, looks).astype(int)
        )

    # A rate of at most 5% gives more than `limit` false positives in 400 runs with probability ≤ 1%:
    # above it, the data would reject "false-positive rate ≤ 5%" at the 1% level.
    limit = stats.binom.ppf(0.99, runs, 0.05)
    assert sequential <= limit
    assert naive > limit  # peeking at a fixed-horizon test inflates its 5% several-fold


def test_once_significant_a_comparison_stays_significant_at_later_looks():
    earlier = PriorLook(p_value=0.01, difference_interval=(0.001, 0.02))
    control, treatment = simulated(3000, seed=31), simulated(3000, seed=32)  # an A/A sample: p alone is large

    comparison = variant_compare(control=control, treatment=treatment, looks=[earlier])

    assert comparison.p_value == 0.01
    assert comparison.significant is True
    assert comparison.difference_interval[0] >= 0.001 and comparison.difference_interval[1] <= 0.02


def test_untested_earlier_looks_do_not_narrow_the_interval():
    control, treatment = simulated(3000, seed=31), simulated(3000, seed=32)
    alone = variant_compare(control=control, treatment=treatment)

    comparison = variant_compare(
        control=control, treatment=treatment, looks=[PriorLook(p_value=None, difference_interval=(0.0, 0.0))]
    )

    assert comparison == alone


def test_the_confidence_sequence_excludes_zero_exactly_when_significant():
    for lift, seed in [(0.0, 41), (0.1, 43), (0.3, 45)]:
        comparison = variant_compare(
            control=simulated(8000, seed=seed), treatment=simulated(8000, lift=lift, seed=seed + 1)
        )

        low, high = comparison.difference_interval
        assert comparison.significant == (not low <= 0 <= high)


def test_the_sequential_interval_is_wider_than_the_fixed_horizon_one():
    control, treatment = simulated(5000, seed=51), simulated(5000, seed=52)
    comparison = variant_compare(control=control, treatment=treatment)
    _, (c_low, c_high) = rate_estimate(control.totals())
    _, (t_low, t_high) = rate_estimate(treatment.totals())
    fixed_half = math.hypot(c_high - c_low, t_high - t_low) / 2

    low, high = comparison.difference_interval

    assert (high - low) / 2 > fixed_half


# Sample size


def test_users_required_exceeds_the_fixed_horizon_sample_size_and_users_needed_counts_down():
    control, treatment = simulated(20_000, seed=61), simulated(20_000, seed=62)
    small = variant_compare(
        control=counts(control.impressions[:2000], control.clicks[:2000]),
        treatment=counts(treatment.impressions[:2000], treatment.clicks[:2000]),
        mde=0.1,
    )
    large = variant_compare(control=control, treatment=treatment, mde=0.1)
    # The fixed-horizon size for the same variance: n = (z₀.₉₇₅ + z₀.₈)² · σ²(difference per user) / δ².
    c_rate, (c_low, c_high) = rate_estimate(control.totals())
    _, (t_low, t_high) = rate_estimate(treatment.totals())
    user_variance = 20_000 * (((c_high - c_low) / 3.92) ** 2 + ((t_high - t_low) / 3.92) ** 2)
    fixed = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 * user_variance / (0.1 * c_rate) ** 2

    assert large.users_required is not None and small.users_required is not None
    assert fixed < large.users_required < 3 * fixed  # continuous monitoring costs users, not orders of magnitude
    assert large.users_needed == max(0, large.users_required - 20_000)
    assert small.users_needed is not None and small.users_needed > large.users_needed


def test_users_required_is_the_least_sample_with_80_percent_power():
    users = users_required(user_variance=0.02, effect=0.005, mixture_variance=0.005**2, alpha=0.05)

    assert users is not None
    power = msprt_power(effect=0.005, variance=0.02 / users, mixture_variance=0.005**2, alpha=0.05)
    below = msprt_power(effect=0.005, variance=0.02 / (users - 1), mixture_variance=0.005**2, alpha=0.05)
    assert below < 0.8 <= power


# Other ratio metrics


def test_revenue_per_user_uses_a_normal_interval_and_detects_a_real_lift():
    rng = np.random.default_rng(71)
    ones = np.ones(20_000)
    control = UserTotals(numerators=rng.lognormal(2.0, 1.0, 20_000), denominators=ones)
    treatment = UserTotals(numerators=rng.lognormal(2.0, 1.0, 20_000) * 1.1, denominators=ones)

    comparison = rate_compare(control=control, treatment=treatment, mde=0.1)

    assert comparison.control_ctr == pytest.approx(control.numerators.mean())
    assert comparison.control_interval[1] > comparison.control_ctr > comparison.control_interval[0]
    assert comparison.significant is True and comparison.difference > 0


def test_conversions_per_impression_are_compared_like_ctr():
    control, treatment = simulated(10_000, seed=81), simulated(10_000, lift=0.3, seed=82)

    as_rate = rate_compare(control=control.totals(), treatment=treatment.totals(), proportion=True)

    assert as_rate == variant_compare(control=control, treatment=treatment)
    with pytest.raises(ValueError, match="proportion"):
        rate_compare(
            control=UserTotals(numerators=np.array([2]), denominators=np.array([1])),
            treatment=control.totals(),
            proportion=True,
        )


def test_passing_only_the_latest_look_equals_passing_the_whole_history():
    control, treatment = simulated(6000, seed=91), simulated(6000, lift=0.2, seed=92)
    latest_only: list[Comparison] = []
    whole: list[Comparison] = []

    for users in range(1000, 6001, 1000):
        c = counts(control.impressions[:users], control.clicks[:users])
        t = counts(treatment.impressions[:users], treatment.clicks[:users])
        latest_only.append(variant_compare(control=c, treatment=t, looks=latest_only[-1:]))
        whole.append(variant_compare(control=c, treatment=t, looks=whole))

    assert latest_only == whole
    assert [look.p_value for look in whole] == sorted((look.p_value for look in whole), reverse=True)


def test_the_mixture_fixed_at_the_first_test_is_carried_to_later_looks():
    control, treatment = simulated(4000, seed=101), simulated(4000, seed=102)
    untested = variant_compare(control=control, treatment=counts(treatment.impressions[:50], treatment.clicks[:50]))
    first = variant_compare(control=control, treatment=treatment, looks=[untested])
    busier = counts(control.impressions, np.minimum(control.impressions, 2 * control.clicks))  # control CTR doubles

    later = variant_compare(control=busier, treatment=treatment, looks=[first])
    chosen = variant_compare(control=busier, treatment=treatment, looks=[first], mixture_sd=0.01)

    assert untested.mixture_sd is None
    assert first.mixture_sd == pytest.approx(0.05 * first.control_ctr)
    assert later.mixture_sd == first.mixture_sd
    assert chosen.mixture_sd == 0.01


def test_conversion_intervals_stay_at_or_above_zero_with_few_conversions():
    from experiments.metrics import conversion_rate

    # 150 users shown 10 items each, one conversion in all: a Wald interval would dip below 0.
    impressions = np.full(150, 10)
    conversions = np.zeros(150, dtype=int)
    conversions[0] = 1
    rate, (low, high) = conversion_rate(UserTotals(conversions, impressions), 0.05)
    assert rate == pytest.approx(1 / 1500)
    assert 0.0 <= low < rate < high < 0.01


def test_repeated_conversions_fall_back_to_a_ratio_interval_clipped_at_zero():
    from experiments.metrics import conversion_rate

    impressions = np.ones(200, dtype=int)
    conversions = np.zeros(200, dtype=int)
    conversions[:3] = 5  # three users bought the one item they were shown five times
    rate, (low, high) = conversion_rate(UserTotals(conversions, impressions), 0.05)
    assert rate == pytest.approx(15 / 200)
    assert low >= 0.0 and high > rate


# Several treatments against one control


def test_each_of_several_treatments_is_tested_at_alpha_shared_among_them():
    assert comparison_alpha(alpha=0.05, treatments=1) == 0.05
    assert comparison_alpha(alpha=0.05, treatments=4) == pytest.approx(0.0125)
    with pytest.raises(ValueError):
        comparison_alpha(alpha=0.05, treatments=0)


def test_aaaa_experiments_declare_any_treatment_different_at_most_alpha_of_the_time():
    # 300 experiments of a control and three treatments, all equal, 2,000 users each, checked at 10
    # looks: a false positive is any treatment significant at any look (the family-wise error).
    runs, users, looks, treatments = 300, 2000, 10, 3
    rng = np.random.default_rng(77)
    impressions, clicks = POPULATION.traffic((runs, treatments + 1, users), rng=rng)
    each = comparison_alpha(alpha=0.05, treatments=treatments)

    family = 0
    for run in range(runs):
        control = counts(impressions[run, 0], clicks[run, 0])
        family += any(
            look.significant
            for k in range(1, treatments + 1)
            for look in monitored(control, counts(impressions[run, k], clicks[run, k]), looks=looks, alpha=each)
        )

    assert family <= stats.binom.ppf(0.99, runs, 0.05)


def test_z_stays_finite_however_small_alpha_is():
    from experiments.statistics import _z

    assert _z(0.05) == pytest.approx(1.959964, rel=1e-6)
    assert math.isfinite(_z(1e-17)) and _z(1e-17) > _z(1e-10) > _z(0.05)
