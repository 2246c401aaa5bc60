"""Statistics of online A/B experiments: delta-method ratio metrics and an always-valid sequential test.

A ratio metric such as CTR (Σ clicks / Σ impressions) is computed over impressions, but users are the
unit of randomisation, and one user's impressions are not independent of each other. Every variance
here is therefore the delta-method variance of a ratio of per-user sums (Deng, Knoblich & Lu 2018,
"Applying the Delta Method in Metric Analytics"), never the binomial variance of the impressions.

The comparison against the control is a mixture sequential probability ratio test (mSPRT; Johari,
Pekelis & Walsh 2017, "Always Valid Inference"), with a normal mixture N(0, τ²) over the difference of
the two rates. Its p-value and confidence sequence are valid however often and whenever they are
looked at, so an experiment page that refreshes every minute cannot manufacture a significant result
by being watched. A fixed-horizon z-test is kept (``fixed_horizon_p_value``) only to show, in the
simulations, what peeking would do to it.

Each refresh of an experiment's metrics compares every variant with the control, passing what the
previous refresh reported for that pair, so the p-value and interval carry over as running values::

    previous = PriorLook(p_value=stored.p_value, difference_interval=(stored.low, stored.high))
    comparison = variant_compare(control=control_counts, treatment=counts, mde=experiment.mde, looks=[previous])

Keep ``alpha`` and ``mde`` fixed for the life of an experiment: the running values combine looks of
one test, and changing them mid-way starts a different one.

An experiment with several treatments tests each against the control at ``comparison_alpha``
(Bonferroni: alpha divided by the number of treatments), so that the chance of declaring any
treatment different when none is stays at most alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import ndtr, ndtri

POWER = 0.8
# Below this many users in a variant no p-value is given: the delta method and the normal
# approximation under the mSPRT are asymptotic, and a handful of heavy users dominates a small sample.
MIN_USERS = 100
# users_required searches up to this many users per variant; beyond it the effect is undetectable in practice.
MAX_USERS_REQUIRED = 10**10


@dataclass(frozen=True)
class UserTotals:
    """Per-user numerator and denominator of a ratio metric in one variant, one entry per user.

    Parameters
    ----------
    numerators : (n_users,) int or float array, e.g. a user's clicked impressions, conversions or revenue
    denominators : (n_users,) int or float array ≥ 0, e.g. a user's impressions (all ones for a per-user mean)
    """

    numerators: np.ndarray
    denominators: np.ndarray

    def __post_init__(self) -> None:
        numerators, denominators = np.asarray(self.numerators), np.asarray(self.denominators)
        if numerators.ndim != 1 or numerators.shape != denominators.shape:
            raise ValueError("numerators and denominators must be 1-D arrays of the same length (one per user)")
        floats = [a for a in (numerators, denominators) if a.dtype.kind not in "iub"]  # integers are finite
        if not all(np.all(np.isfinite(a)) for a in floats):
            raise ValueError("numerators and denominators must be finite")
        if np.any(denominators < 0):
            raise ValueError("denominators must be ≥ 0")


@dataclass(frozen=True)
class VariantCounts:
    """One variant's traffic, per user: the users of the variant with at least one impression.

    (A user assigned but never shown anything adds nothing to either sum; counting them only
    changes the number of users the 100-user floor and ``users_needed`` see.)

    Parameters
    ----------
    impressions : (n_users,) int64, items shown to that user in the variant
    clicks : (n_users,) int64, shown items with an attributed click (0 ≤ clicks ≤ impressions)
    """

    impressions: np.ndarray
    clicks: np.ndarray

    def __post_init__(self) -> None:
        impressions, clicks = np.asarray(self.impressions), np.asarray(self.clicks)
        if impressions.ndim != 1 or impressions.shape != clicks.shape:
            raise ValueError("impressions and clicks must be 1-D arrays of the same length (one per user)")
        if np.any(clicks < 0) or np.any(clicks > impressions):
            raise ValueError("every user needs 0 ≤ clicks ≤ impressions")

    def totals(self) -> UserTotals:
        """The CTR as a ratio metric: clicked impressions over impressions."""
        return UserTotals(numerators=self.clicks, denominators=self.impressions)


class Look(Protocol):
    """What an earlier look at the same comparison reported (a ``Comparison`` is one)."""

    @property
    def p_value(self) -> float | None: ...

    @property
    def difference_interval(self) -> tuple[float, float]: ...

    @property
    def mixture_sd(self) -> float | None: ...


@dataclass(frozen=True)
class PriorLook:
    """An earlier look rebuilt from storage: its always-valid p-value, difference interval and τ."""

    p_value: float | None
    difference_interval: tuple[float, float]
    mixture_sd: float | None = None


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one ratio metric (fields named ``ctr`` hold the rate of any metric).

    ``p_value`` and ``difference_interval`` are always valid: the running minimum of the mSPRT p-value
    and the running intersection of its confidence sequence over the looks passed in. ``users_needed``
    is how many more users each variant needs, ``users_required`` the total per variant, for the test
    to detect a relative change of ``mde`` with power 0.8. ``reason`` says why there is no p-value (or
    anything else the page should show beside the numbers).
    """

    ctr: float
    ctr_interval: tuple[float, float]
    control_ctr: float
    control_interval: tuple[float, float]
    difference: float
    difference_interval: tuple[float, float]
    relative_difference: float | None
    p_value: float | None
    significant: bool
    users_needed: int | None
    method: str
    users_required: int | None = None
    reason: str | None = None
    mixture_sd: float | None = None  # τ of the test, carried to later looks; None before the first test


@dataclass(frozen=True)
class _Moments:
    users: int
    numerator_total: float
    denominator_total: float
    denominator_square_total: float
    rate: float  # Σ numerators / Σ denominators; 0 when Σ denominators = 0
    variance: float | None  # delta-method variance of rate; None with < 2 users or no denominator


def _moments(totals: UserTotals) -> _Moments:
    x = np.asarray(totals.numerators, dtype=np.float64)
    y = np.asarray(totals.denominators, dtype=np.float64)
    n, sum_x, sum_y = len(x), float(x.sum()), float(y.sum())
    rate = sum_x / sum_y if sum_y > 0 else 0.0
    variance = None
    if n >= 2 and sum_y > 0:
        # Var(x̄/ȳ) ≈ (s²ₓ − 2r·sₓᵧ + r²·s²ᵧ) / (n·ȳ²): the sample variance of the residuals x − r·y
        # (which sum to zero) over n·ȳ². Computed on the residuals, it cannot go negative by cancellation.
        residuals = x - rate * y
        variance = float(residuals @ residuals) * n / ((n - 1) * sum_y * sum_y)
    return _Moments(n, sum_x, sum_y, float(y @ y), rate, variance)


def _z(alpha: float) -> float:
    return float(-ndtri(alpha / 2))  # not ndtri(1 - alpha / 2): 1 - 5e-17 is 1.0 in floats, and z infinite


def _proportion_interval(moments: _Moments, alpha: float) -> tuple[float, float]:
    """Wilson score interval at the delta-method effective sample size (a clustered proportion).

    The effective size r(1 − r) / Var is how survey statistics carry a design effect into a
    binomial interval (Korn & Graubard 1998); for large samples this equals r ± z·√Var.
    """
    if moments.denominator_total <= 0:
        return (0.0, 1.0)
    rate, variance = moments.rate, moments.variance
    if 0 < rate < 1 and variance is not None and variance > 0:
        effective = rate * (1 - rate) / variance  # impressions worth of independent trials
    elif 0 < rate < 1:
        effective = moments.denominator_total  # every user has the same ratio: nothing clusters
    else:
        # No click (or only clicks): the delta variance is 0 and says nothing. Assume the worst
        # clustering, each user all-or-nothing, whose effective size is (Σy)² / Σy² (Kish).
        effective = moments.denominator_total**2 / moments.denominator_square_total
    z = _z(alpha)
    shrink = 1 + z * z / effective
    centre = (rate + z * z / (2 * effective)) / shrink
    half = z / shrink * math.sqrt(rate * (1 - rate) / effective + z * z / (4 * effective * effective))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _wald_interval(moments: _Moments, alpha: float) -> tuple[float, float]:
    if moments.variance is None:
        return (-math.inf, math.inf)
    half = _z(alpha) * math.sqrt(moments.variance)
    return (moments.rate - half, moments.rate + half)


def _interval(moments: _Moments, alpha: float, proportion: bool) -> tuple[float, float]:
    return _proportion_interval(moments, alpha) if proportion else _wald_interval(moments, alpha)


def rate_estimate(
    totals: UserTotals, *, alpha: float = 0.05, proportion: bool = False
) -> tuple[float, tuple[float, float]]:
    """A ratio metric Σ numerators / Σ denominators and its 1 − alpha confidence interval.

    The variance is the delta-method variance over users. With ``proportion`` (numerators ≤
    denominators, a rate in [0, 1]) the interval is a Wilson score interval at the effective sample
    size that variance implies, which stays inside [0, 1] and is not degenerate at 0 clicks;
    otherwise a normal (Wald) interval, (−inf, inf) with fewer than 2 users.
    """
    _check_alpha(alpha)
    if proportion:
        _check_proportion(totals)
    moments = _moments(totals)
    return moments.rate, _interval(moments, alpha, proportion)


def ctr_estimate(counts: VariantCounts, *, alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """One variant's CTR (Σ clicks / Σ impressions) and its 1 − alpha interval, clustered by user.

    With no impression the CTR is reported as 0 with the uninformative interval (0, 1).
    """
    return rate_estimate(counts.totals(), alpha=alpha, proportion=True)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_proportion(totals: UserTotals) -> None:
    numerators, denominators = np.asarray(totals.numerators), np.asarray(totals.denominators)
    if np.any(numerators < 0) or np.any(numerators > denominators):
        raise ValueError("a proportion needs 0 ≤ numerator ≤ denominator for every user")


def _untestable(control: _Moments, treatment: _Moments, min_users: int) -> str | None:
    """Why no p-value can honestly be given yet, or None."""
    for name, moments in (("control", control), ("treatment", treatment)):
        if moments.users < min_users:
            return f"too few users in the {name} ({moments.users} < {min_users}); no test yet"
        if moments.denominator_total <= 0:
            return f"no denominator (e.g. no impression) in the {name} yet; no test yet"
        if moments.numerator_total == 0:
            return f"nothing counted (e.g. no click) in the {name} yet; no test yet"
    if not (control.variance or 0) + (treatment.variance or 0) > 0:
        return "every user has the same rate, so the variance cannot be estimated; no test yet"
    return None


def msprt_log_likelihood_ratio(difference: float, variance: float, mixture_variance: float) -> float:
    """log Λ of the normal-mixture SPRT of H0: difference = 0, for an estimate ~ N(difference, variance).

    Λ = √(V / (V + τ²)) · exp(τ²·d² / (2V(V + τ²))), the likelihood ratio averaged over effects
    drawn from N(0, τ²). Under H0 it is a martingale, so P(Λ ever ≥ 1/alpha) ≤ alpha (Ville).
    """
    v, t2 = variance, mixture_variance
    return 0.5 * math.log(v / (v + t2)) + t2 * difference * difference / (2 * v * (v + t2))


def confidence_sequence_half_width(variance: float, mixture_variance: float, alpha: float) -> float:
    """Half-width of the mSPRT's 1 − alpha confidence sequence: the θ whose Λ(θ) stays below 1/alpha."""
    v, t2 = variance, mixture_variance
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


def msprt_power(*, effect: float, variance: float, mixture_variance: float, alpha: float) -> float:
    """Probability that the mSPRT rejects at a look where the estimate ~ N(effect, variance).

    That is its power with a single final look; monitored continuously it can only reject more
    often, so this is a lower bound on its power by that sample size.
    """
    boundary = confidence_sequence_half_width(variance, mixture_variance, alpha)
    sd = math.sqrt(variance)
    return float(ndtr((abs(effect) - boundary) / sd) + ndtr((-abs(effect) - boundary) / sd))


def users_required(
    *, user_variance: float, effect: float, mixture_variance: float, alpha: float, power: float = POWER
) -> int | None:
    """Users per variant for the mSPRT to detect ``effect`` with ``power`` (None when out of reach).

    ``user_variance`` is the per-user variance of the difference, n·Var(difference) (the sum of the
    two variants' n·Var(rate)), so a sample of n users per variant has Var = user_variance / n.
    """
    if effect == 0 or user_variance <= 0:
        return None

    def enough(users: int) -> bool:
        variance = user_variance / users
        return msprt_power(effect=effect, variance=variance, mixture_variance=mixture_variance, alpha=alpha) >= power

    if enough(1):
        return 1
    # Bracket from the fixed-horizon size (the sequential test needs a small multiple of it), then bisect.
    fixed = (_z(alpha) + float(ndtri(power))) ** 2 * user_variance / (effect * effect)
    low, high = 1, max(2, min(MAX_USERS_REQUIRED, math.ceil(fixed)))
    while not enough(high):
        if high == MAX_USERS_REQUIRED:
            return None
        low, high = high, min(MAX_USERS_REQUIRED, 2 * high)
    while high - low > 1:  # enough(high) and not enough(low): find the least users that is enough
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def fixed_horizon_p_value(*, control: UserTotals, treatment: UserTotals, min_users: int = MIN_USERS) -> float | None:
    """The two-sided z-test p-value of the difference with the delta-method variance.

    Valid only when computed once, at a sample size fixed in advance: checked at every look and
    stopped at the first p < alpha, its false-positive rate grows far above alpha (see
    bench/ab_simulation.py). The experiment page uses ``rate_compare`` instead.
    """
    c, t = _moments(control), _moments(treatment)
    if _untestable(c, t, min_users) is not None:
        return None
    variance = (c.variance or 0.0) + (t.variance or 0.0)
    return float(2 * ndtr(-abs(t.rate - c.rate) / math.sqrt(variance)))


def _running(
    p_value: float, interval: tuple[float, float], looks: Sequence[Look]
) -> tuple[float, tuple[float, float], str | None]:
    """Running minimum of the p-value and running intersection of the confidence sequence."""
    low, high = interval
    for look in looks:
        if look.p_value is None:  # untested looks carry no confidence sequence
            continue
        p_value = min(p_value, look.p_value)
        low, high = max(low, look.difference_interval[0]), min(high, look.difference_interval[1])
    if low > high:
        note = "the looks' confidence sequences no longer overlap (has the effect changed?); showing this look's"
        return p_value, interval, note
    return p_value, (low, high), None


def rate_compare(
    *,
    control: UserTotals,
    treatment: UserTotals,
    alpha: float = 0.05,
    mde: float = 0.05,
    looks: Sequence[Look] = (),
    proportion: bool = False,
    mixture_sd: float | None = None,
    min_users: int = MIN_USERS,
) -> Comparison:
    """Treatment against control on a ratio metric, valid under continuous monitoring.

    Parameters
    ----------
    control, treatment : per-user numerators and denominators of each variant (see ``UserTotals``)
    alpha : two-sided significance level; intervals are 1 − alpha
    mde : minimum detectable effect, relative to the control's rate (0.05 = ±5%), for ``users_needed``
        and the default mixture
    looks : earlier looks at this same comparison (same metric, alpha and mixture), oldest first; the
        p-value is their running minimum and the difference interval their running intersection, so
        once significant a comparison stays so. Each ``Comparison`` already carries the running values,
        so passing only the latest one is enough.
    proportion : the metric is a proportion (numerator ≤ denominator, e.g. CTR or conversions per
        impression): per-variant intervals are Wilson intervals at the effective sample size
    mixture_sd : τ, the standard deviation of the normal mixture over the absolute difference; the
        test is most sensitive to effects near τ. Default: the τ the latest of ``looks`` carries, or
        at the first test mde × |control rate| (the effect the operator wants to detect)
    min_users : fewer users than this in either variant gives no p-value
    """
    _check_alpha(alpha)
    if mde <= 0:
        raise ValueError(f"mde must be > 0, got {mde}")
    if proportion:
        _check_proportion(control)
        _check_proportion(treatment)
    c, t = _moments(control), _moments(treatment)
    c_interval, t_interval = _interval(c, alpha, proportion), _interval(t, alpha, proportion)
    difference = t.rate - c.rate
    # τ is fixed once the first test has run (carried by the looks), so that every look belongs to one
    # test: a running minimum over tests with different mixtures would not be a valid p-value.
    carried = next((look.mixture_sd for look in reversed(looks) if look.mixture_sd is not None), None)
    fixed_tau = mixture_sd if mixture_sd is not None else carried
    tau = fixed_tau if fixed_tau is not None else mde * abs(c.rate)
    reason = _untestable(c, t, min_users) or (None if tau > 0 else "the mixture τ is 0: set mixture_sd")
    method = (
        f"mSPRT, always valid (normal mixture τ = {tau:.3g}) on the delta-method difference of per-user "
        "ratios: p-value and interval hold however often the page is checked"
    )
    p_value: float | None = None
    if reason is None:
        variance = (c.variance or 0.0) + (t.variance or 0.0)
        p_now = math.exp(-max(0.0, msprt_log_likelihood_ratio(difference, variance, tau * tau)))  # 1/Λ, capped at 1
        half = confidence_sequence_half_width(variance, tau * tau, alpha)
        p_value, interval, reason = _running(p_now, (difference - half, difference + half), looks)
    else:
        # No test: the range the two variants' own intervals allow, which is not a confidence sequence.
        interval = (t_interval[0] - c_interval[1], t_interval[1] - c_interval[0])
    required = _users_required(c, t, mde=mde, tau=tau, alpha=alpha)
    return Comparison(
        ctr=t.rate,
        ctr_interval=t_interval,
        control_ctr=c.rate,
        control_interval=c_interval,
        difference=difference,
        difference_interval=interval,
        relative_difference=difference / c.rate if c.rate != 0 else None,
        p_value=p_value,
        significant=p_value is not None and p_value <= alpha,
        users_needed=None if required is None else max(0, required - min(c.users, t.users)),
        method=method,
        users_required=required,
        reason=reason,
        mixture_sd=tau if p_value is not None or fixed_tau is not None else None,
    )


def _users_required(c: _Moments, t: _Moments, *, mde: float, tau: float, alpha: float) -> int | None:
    """Users per variant for the test to detect a relative change of mde in the control's rate."""
    if c.variance is None or c.variance <= 0 or c.rate == 0 or tau <= 0:
        return None
    # Per-user variance of the difference: n·Var(rate) of each variant (the control's twice until
    # the treatment has one).
    treatment_user_variance = t.users * t.variance if t.variance else c.users * c.variance
    user_variance = c.users * c.variance + treatment_user_variance
    effect = mde * abs(c.rate)
    return users_required(user_variance=user_variance, effect=effect, mixture_variance=tau * tau, alpha=alpha)


def comparison_alpha(*, alpha: float, treatments: int) -> float:
    """The level each of ``treatments`` comparisons with the control is tested at, so that the chance
    of any false positive among them stays at most ``alpha``: Bonferroni's alpha / treatments, valid
    whatever the dependence between the comparisons (they share the control), and compatible with the
    always-valid test (each comparison's own error bound holds at every look, so does their union)."""
    _check_alpha(alpha)
    if treatments < 1:
        raise ValueError(f"treatments must be >= 1, got {treatments}")
    return alpha / treatments


def variant_compare(
    *,
    control: VariantCounts,
    treatment: VariantCounts,
    alpha: float = 0.05,
    mde: float = 0.05,
    looks: Sequence[Look] = (),
    mixture_sd: float | None = None,
    min_users: int = MIN_USERS,
) -> Comparison:
    """CTR of treatment against control, always valid under continuous monitoring (see ``rate_compare``)."""
    return rate_compare(
        control=control.totals(),
        treatment=treatment.totals(),
        alpha=alpha,
        mde=mde,
        looks=looks,
        proportion=True,
        mixture_sd=mixture_sd,
        min_users=min_users,
    )
