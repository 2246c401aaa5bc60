"""Synthetic user populations for checking the experiment statistics (tests and bench/ab_simulation.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats


@dataclass(frozen=True)
class Population:
    """Users whose click propensity and traffic both vary, as on a real site.

    A user's propensity p ~ Beta with mean ``mean_ctr`` and ``concentration`` = a + b (lower: more
    heterogeneous users, so impressions cluster more); their impressions are 1 + Poisson(λ) with
    λ ~ Gamma(``impressions_shape``) of mean ``mean_impressions`` − 1 (a heavy tail of busy users);
    each shown item is clicked with probability p. A variant with ``lift`` L clicks with min(1, p·(1 + L)).
    """

    mean_ctr: float = 0.05
    concentration: float = 10.0
    mean_impressions: float = 10.0
    impressions_shape: float = 0.8

    @property
    def _beta(self) -> tuple[float, float]:
        return self.mean_ctr * self.concentration, (1 - self.mean_ctr) * self.concentration

    def traffic(
        self, shape: int | tuple[int, ...], *, lift: float = 0.0, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, clicks) int64 arrays of ``shape``, one entry per user (users in arrival order)."""
        rate = rng.gamma(self.impressions_shape, (self.mean_impressions - 1) / self.impressions_shape, shape)
        impressions = 1 + rng.poisson(rate)
        a, b = self._beta
        propensity = np.minimum(1.0, rng.beta(a, b, shape) * (1 + lift))
        clicks = rng.binomial(impressions, propensity)
        return impressions.astype(np.int64), clicks.astype(np.int64)

    def true_ctr(self, *, lift: float = 0.0) -> float:
        """The population CTR E[clicks] / E[impressions] = E[min(1, p·(1 + L))] (traffic ⟂ propensity)."""
        a, b = self._beta
        if lift == 0:
            return self.mean_ctr
        value, _ = integrate.quad(lambda p: min(1.0, p * (1 + lift)) * stats.beta.pdf(p, a, b), 0, 1, limit=200)
        return float(value)
