"""Which variant a user sees: a deterministic hash of (experiment, user) against cumulative weights."""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence

_SCALE = float(2**53)


def assignment_bucket(*, experiment_id: int, user_id: str) -> float:
    """A point in [0, 1) fixed by (experiment, user): the same user lands on the same point for
    as long as the experiment runs, and experiments split users independently of each other."""
    digest = hashlib.blake2b(f"{experiment_id}\x1f{user_id}".encode(), digest_size=8).digest()
    # The top 53 bits: exactly representable, so the point stays below 1 (all 64 bits divided by
    # 2**64 round up to 1.0 for the top 2**10 values, which no cumulative share is above).
    return (int.from_bytes(digest, "big") >> 11) / _SCALE


def weights_cumulative(weights: Sequence[float]) -> tuple[float, ...]:
    """Cumulative shares ending at exactly 1.0 (weights are positive, in any unit)."""
    total = float(sum(weights))
    if not weights or total <= 0 or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive")
    cumulative = [c / total for c in itertools.accumulate(weights)]
    cumulative[-1] = 1.0
    return tuple(cumulative)


def variant_assign(*, experiment_id: int, user_id: str, names: Sequence[str], cumulative: Sequence[float]) -> str:
    """The variant of ``names`` (with ``cumulative`` shares from weights_cumulative) for this user."""
    point = assignment_bucket(experiment_id=experiment_id, user_id=user_id)
    return names[bisect.bisect_right(cumulative, point)]
