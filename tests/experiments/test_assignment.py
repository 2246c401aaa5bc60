"""The assignment of users to variants: deterministic, sticky, and split by the weights."""

from __future__ import annotations

import pytest

from experiments.assignment import assignment_bucket, variant_assign, weights_cumulative

pytestmark = pytest.mark.unit


def test_the_same_user_always_gets_the_same_variant() -> None:
    cumulative = weights_cumulative([1, 1, 1])
    first = [variant_assign(experiment_id=7, user_id=f"u{n}", names="abc", cumulative=cumulative) for n in range(500)]
    again = [variant_assign(experiment_id=7, user_id=f"u{n}", names="abc", cumulative=cumulative) for n in range(500)]
    assert first == again


def test_experiments_split_users_independently() -> None:
    cumulative = weights_cumulative([1, 1])
    users = [f"user-{n}" for n in range(4_000)]
    one = [variant_assign(experiment_id=1, user_id=u, names="ab", cumulative=cumulative) for u in users]
    two = [variant_assign(experiment_id=2, user_id=u, names="ab", cumulative=cumulative) for u in users]
    agreement = sum(a == b for a, b in zip(one, two, strict=True)) / len(users)
    assert 0.45 < agreement < 0.55  # independent halves agree half the time, not always


def test_buckets_lie_in_the_unit_interval() -> None:
    buckets = [assignment_bucket(experiment_id=3, user_id=str(n)) for n in range(10_000)]
    assert min(buckets) >= 0.0
    assert max(buckets) < 1.0


@pytest.mark.parametrize("weights", [[1, 1], [0.9, 0.1], [5, 3, 2], [1, 1, 1, 1, 1]])
def test_100k_users_split_by_the_weights_within_chi_square_tolerance(weights: list[float]) -> None:
    names = [f"v{k}" for k in range(len(weights))]
    cumulative = weights_cumulative(weights)
    total = 100_000
    counts = dict.fromkeys(names, 0)
    for n in range(total):
        counts[variant_assign(experiment_id=42, user_id=f"user:{n}", names=names, cumulative=cumulative)] += 1
    expected = [total * w / sum(weights) for w in weights]
    chi_square = sum((counts[name] - e) ** 2 / e for name, e in zip(names, expected, strict=True))
    # The 99.9th percentile of chi-square with k-1 degrees of freedom (k ≤ 5): 10.8, 13.8, 16.3, 18.5.
    critical = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}[len(weights) - 1]
    assert chi_square < critical


def test_cumulative_weights_end_at_one_and_refuse_non_positive_weights() -> None:
    assert weights_cumulative([1, 2, 1]) == (0.25, 0.75, 1.0)
    with pytest.raises(ValueError):
        weights_cumulative([1, 0])
    with pytest.raises(ValueError):
        weights_cumulative([])


def test_the_highest_hashes_stay_below_one_and_land_on_the_last_variant(monkeypatch):
    import hashlib

    from experiments import assignment

    class Highest:
        def digest(self) -> bytes:
            return b"\xff" * 8  # 2**64 - 1: divided by 2**64 as a float it is exactly 1.0

    monkeypatch.setattr(hashlib, "blake2b", lambda *args, **kwargs: Highest())

    point = assignment.assignment_bucket(experiment_id=1, user_id="u")
    assert point < 1.0
    assert assignment.variant_assign(experiment_id=1, user_id="u", names=["a", "b"], cumulative=(0.5, 1.0)) == "b"
