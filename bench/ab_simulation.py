"""Experiment statistics on simulated traffic: false positives under peeking, power, interval coverage.

Everything goes through experiments/statistics.py's public functions, as the metrics task calls them,
on experiments.simulation.Population (mean CTR 5%, Beta(0.5, 9.5) click propensities, 1 + Poisson
impressions per user with a Gamma(0.8) rate of mean 9: a skewed, clustered population). Pure CPU,
no service needed:

    .venv/bin/python bench/ab_simulation.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, write_section

from experiments.simulation import Population
from experiments.statistics import (
    Comparison,
    VariantCounts,
    ctr_estimate,
    fixed_horizon_p_value,
    rate_estimate,
    variant_compare,
)

POPULATION = Population()
SEED = 2026


def prefix(impressions: np.ndarray, clicks: np.ndarray, users: int) -> VariantCounts:
    return VariantCounts(impressions=impressions[:users], clicks=clicks[:users])


def looks_of(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], checkpoints: np.ndarray, mde: float
) -> Iterator[tuple[int, Comparison, float | None]]:
    """Each look's comparison (given the one before, as the page does) and the naive fixed-horizon p-value."""
    previous: list[Comparison] = []
    for users in checkpoints:
        control, treatment = prefix(*a, users), prefix(*b, users)
        comparison = variant_compare(control=control, treatment=treatment, mde=mde, looks=previous)
        previous = [comparison]
        yield int(users), comparison, fixed_horizon_p_value(control=control.totals(), treatment=treatment.totals())


def interval(successes: int, runs: int) -> str:
    """A rate with its exact (Clopper–Pearson) 95% interval, in percent."""
    low = stats.beta.ppf(0.025, successes, runs - successes + 1) if successes else 0.0
    high = stats.beta.ppf(0.975, successes + 1, runs - successes) if successes < runs else 1.0
    return f"{100 * successes / runs:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def aa_false_positives(runs: int, users: int, looks: int, rng: np.random.Generator) -> list[str]:
    checkpoints = np.linspace(users // looks, users, looks).astype(int)
    a = POPULATION.traffic((runs, users), rng=rng)
    b = POPULATION.traffic((runs, users), rng=rng)
    sequential = naive_any = naive_last = 0
    for run in range(runs):
        history = list(looks_of((a[0][run], a[1][run]), (b[0][run], b[1][run]), checkpoints, mde=0.05))
        sequential += any(comparison.significant for _, comparison, _ in history)
        naive_any += any(p is not None and p < 0.05 for _, _, p in history)
        naive_last += history[-1][2] is not None and history[-1][2] < 0.05
    return [
        f"| {looks} looks (every {users // looks:,} users, up to {users:,}) | {runs:,} | {interval(sequential, runs)} "
        f"| {interval(naive_any, runs)} | {interval(naive_last, runs)} |"
    ]


def power(effects: list[float], runs: int, max_users: int, step: int, rng: np.random.Generator) -> list[str]:
    checkpoints = np.arange(step, max_users + 1, step)
    horizons = [h for h in (2_000, 5_000, 10_000, 20_000, 50_000, 100_000) if h <= max_users]
    rows = []
    for effect in effects:
        crossed = np.full(runs, np.inf)
        fixed = np.zeros((runs, len(horizons)), dtype=bool)
        required = []
        for run in range(runs):
            a = POPULATION.traffic(max_users, rng=rng)
            b = POPULATION.traffic(max_users, lift=effect, rng=rng)
            for users, comparison, p in looks_of(a, b, checkpoints, mde=effect):
                if comparison.significant and comparison.difference > 0 and users < crossed[run]:
                    crossed[run] = users
                if users in horizons:
                    fixed[run, horizons.index(users)] = p is not None and p < 0.05 and comparison.difference > 0
            required.append(comparison.users_required or np.inf)
        cells = [
            f"{100 * np.mean(crossed <= h):.0f}% / {100 * fixed[:, i].mean():.0f}%" for i, h in enumerate(horizons)
        ]
        reached = np.sort(crossed)[int(np.ceil(0.8 * runs)) - 1]
        rows.append(
            f"| +{100 * effect:.0f}% | {' | '.join(cells)} | {np.median(required):,.0f} | "
            + (f"{reached:,.0f}" if np.isfinite(reached) else f"> {max_users:,}")
            + " |"
        )
    header = (
        "| true lift (relative) | "
        + " | ".join(f"{h:,} users" for h in horizons)
        + " | users_required (median) | users at which 80% had stopped |"
    )
    return [header, "|---|" + "---:|" * (len(horizons) + 2), *rows]


def coverage(draws: int, sizes: list[int], rng: np.random.Generator) -> list[str]:
    truth = POPULATION.true_ctr()
    rows = []
    for users in sizes:
        impressions, clicks = POPULATION.traffic((draws, users), rng=rng)
        covered = binomial = 0
        for draw in range(draws):
            ctr, (low, high) = ctr_estimate(VariantCounts(impressions=impressions[draw], clicks=clicks[draw]))
            covered += low <= truth <= high
            half = 1.959964 * np.sqrt(ctr * (1 - ctr) / impressions[draw].sum())
            binomial += ctr - half <= truth <= ctr + half
        rows.append(f"| {users:,} | {draws:,} | {interval(covered, draws)} | {interval(binomial, draws)} |")
    return rows


def sequence_coverage(runs: int, users: int, looks: int, lift: float, rng: np.random.Generator) -> list[str]:
    """How often the true difference stays inside the difference interval at every look of a run."""
    truth = POPULATION.true_ctr(lift=lift) - POPULATION.true_ctr()
    checkpoints = np.linspace(users // looks, users, looks).astype(int)
    a, b = POPULATION.traffic((runs, users), rng=rng), POPULATION.traffic((runs, users), lift=lift, rng=rng)
    always = naive_always = 0
    for run in range(runs):
        inside = naive_inside = True
        for n, comparison, _ in looks_of((a[0][run], a[1][run]), (b[0][run], b[1][run]), checkpoints, mde=lift):
            low, high = comparison.difference_interval
            inside &= low <= truth <= high
            # The fixed-horizon 95% interval of the difference at this look: ± z·√(Var_c + Var_t), each
            # variant's delta-method variance read back from its normal interval (half-width z·√Var).
            halves = [
                wald_half_width(prefix(*variant, n)) for variant in ((a[0][run], a[1][run]), (b[0][run], b[1][run]))
            ]
            naive_inside &= abs(comparison.difference - truth) <= np.hypot(*halves)
        always += inside
        naive_always += naive_inside
    return [
        f"| +{100 * lift:.0f}% lift, {looks} looks up to {users:,} users | {runs:,} | {interval(always, runs)} "
        f"| {interval(naive_always, runs)} |"
    ]


def wald_half_width(counts: VariantCounts) -> float:
    _, (low, high) = rate_estimate(counts.totals())
    return (high - low) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the runs, for a smoke check (nothing written)")
    parser.add_argument("--fewer", type=float, default=1.0, help="divide every number of runs by this (default 1)")
    args = parser.parse_args()
    scale = 10 if args.quick else args.fewer
    rng = np.random.default_rng(SEED)
    started, cpu = time.perf_counter(), time.process_time()

    def runs(full: int) -> int:
        return int(full / scale)

    aa = [
        *aa_false_positives(runs(2000), 2000, 20, rng),
        *aa_false_positives(runs(1000), 10_000, 100, rng),
    ]
    power_rows = power([0.05, 0.10, 0.15, 0.20], runs(200), 50_000, 1_000, rng)
    coverage_rows = coverage(runs(4000), [100, 1_000, 10_000], rng)
    sequence_rows = [*sequence_coverage(runs(1000), 10_000, 20, 0.10, rng)]

    lines = [
        "## Experiment statistics on simulated traffic (`bench/ab_simulation.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} in {time.perf_counter() - started:.0f} s "
        f"({time.process_time() - cpu:.0f} s CPU; load average {os.getloadavg()[1]:.0f} over the last 5 min, "
        f"so the CPU time is the comparable figure), seed {SEED}. Population: mean CTR 5%, click propensity "
        "per user Beta(0.5, 9.5), impressions per user 1 + Poisson(Gamma(0.8) of mean 9) — skewed and "
        "clustered. A variant with lift L clicks with min(1, p·(1 + L)). Every figure goes through "
        "`experiments.statistics` as the metrics task calls it (each look given the one before, τ = mde × the "
        "control CTR fixed at the first tested look); rates carry their exact 95% interval over the runs.",
        "",
        "**False positives in A/A tests watched continuously** (significant at *any* look, α = 0.05). The naive "
        "test is the fixed-horizon z-test on the same delta-method variance, checked at each look:",
        "",
        "| monitoring | runs | mSPRT (the page) | naive test, any look | naive test, final look only |",
        "|---|---:|---:|---:|---:|",
        *aa,
        "",
        "**Power**: share of runs where B (truly better) was reported significantly better by that many users per "
        "variant — mSPRT watched every 1,000 users with `mde` = the true lift / a fixed-horizon test looked at "
        f"once at exactly that size. {runs(200)} runs per lift:",
        "",
        *power_rows,
        "",
        "**Coverage of one variant's 95% CTR interval** (delta method, Wilson at the effective size) against the "
        "binomial interval that treats impressions as independent:",
        "",
        "| users | draws | delta method | binomial |",
        "|---:|---:|---:|---:|",
        *coverage_rows,
        "",
        "**Coverage of the difference at every look at once** (the true difference inside the interval at all "
        "looks of a run): the mSPRT confidence sequence against the fixed-horizon 95% interval:",
        "",
        "| experiment | runs | confidence sequence | fixed-horizon interval |",
        "|---|---:|---:|---:|",
        *sequence_rows,
    ]
    body = "\n".join(lines)
    print(body)
    if not args.quick:
        write_section("ab-simulation", body)


if __name__ == "__main__":
    main()
