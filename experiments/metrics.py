"""Per-variant metrics from the feedback tables, computed set-based by a beat task into snapshots.

Definitions (what the experiment page and GET /experiments/{id} report):
- users: distinct users with an impression in the variant; impressions: impression rows.
- clicks: impressions (one row = one item shown in one answer) with at least one attributed event of
  a type marked ``counts_as_click`` — matched on the attribution's user, item, impression time and
  recommendation id — so clicks ≤ impressions and a user clicking an item twice counts once.
- conversions: attributed events per event type (each counted, also repeats).
- revenue (only when RECSYS_REVENUE_ATTRIBUTE names an item attribute): the sum, over attributed
  events of the types in RECSYS_REVENUE_EVENT_TYPES, of the item's numeric attribute now (events
  whose item has no such number add nothing).
- coverage: distinct items shown / items in the catalogue that are not hidden.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from experiments.models import Experiment, ExperimentStatus, Variant, VariantSnapshot
from experiments.selectors import snapshots_latest
from experiments.statistics import (
    PriorLook,
    UserTotals,
    VariantCounts,
    comparison_alpha,
    ctr_estimate,
    rate_compare,
    rate_estimate,
    variant_compare,
)
from recsys.models import Item

logger = logging.getLogger(__name__)
# Snapshots of a stopped experiment are still computed this long after it stopped (late clicks).
SETTLE_SECONDS = 3600
FINAL_SNAPSHOT_WITHIN = timedelta(days=1)  # a stopped experiment's settled snapshot is still taken this late

PER_USER_SQL = """
WITH clicked AS (
    SELECT DISTINCT a.user_id, a.item_id, a.shown_at, a.recommendation_id
    FROM recsys_attribution a JOIN recsys_eventtype t ON t.name = a.event_type AND t.counts_as_click
    WHERE a.experiment_id = %(experiment)s AND a.shown_at IS NOT NULL
)
SELECT i.variant, i.user_id, count(*), count(c.user_id)
FROM recsys_impression i
LEFT JOIN clicked c
  ON c.user_id = i.user_id AND c.item_id = i.item_id AND c.shown_at = i.shown_at
 AND c.recommendation_id IS NOT DISTINCT FROM i.recommendation_id
WHERE i.experiment_id = %(experiment)s AND i.variant IS NOT NULL
GROUP BY i.variant, i.user_id
"""
ITEMS_SHOWN_SQL = """
SELECT variant, count(DISTINCT item_id) FROM recsys_impression
WHERE experiment_id = %(experiment)s AND variant IS NOT NULL GROUP BY variant
"""
CONVERSIONS_SQL = """
SELECT a.variant, a.user_id, a.event_type, count(*),
       sum(CASE WHEN a.event_type = ANY(%(revenue_types)s) AND jsonb_typeof(it.attributes -> %(attribute)s) = 'number'
                THEN (it.attributes -> %(attribute)s)::numeric END)
FROM recsys_attribution a JOIN recsys_item it ON it.id = a.item_id
WHERE a.experiment_id = %(experiment)s AND a.variant IS NOT NULL
GROUP BY a.variant, a.user_id, a.event_type
"""


OWN_BANDS = ("ctr", "ctr_interval", "control_interval")


@dataclass
class VariantData:
    """One variant's counts: per-user arrays aligned on ``users`` (for the statistics) and totals."""

    users: list[int] = field(default_factory=list)
    impressions: list[int] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    items_shown: int = 0
    conversions: dict[str, dict[int, int]] = field(default_factory=dict)  # type → user → events
    revenue: dict[int, float] = field(default_factory=dict)  # user → revenue

    def counts(self) -> VariantCounts:
        return VariantCounts(
            impressions=np.asarray(self.impressions, dtype=np.int64), clicks=np.asarray(self.clicks, dtype=np.int64)
        )

    def per_impression(self, per_user: dict[int, Any]) -> UserTotals:
        """A metric per impression as a ratio of per-user sums (users without impressions left out)."""
        numerators = np.asarray([float(per_user.get(u, 0)) for u in self.users], dtype=np.float64)
        return UserTotals(numerators=numerators, denominators=np.asarray(self.impressions, dtype=np.float64))


def variants_data(*, experiment_id: int) -> dict[str, VariantData]:
    """Every variant's per-user counts, read in three set-based statements."""
    data: dict[str, VariantData] = {}
    params: dict[str, Any] = {
        "experiment": experiment_id,
        "attribute": settings.RECSYS_REVENUE_ATTRIBUTE or "",
        "revenue_types": list(settings.RECSYS_REVENUE_EVENT_TYPES),
    }
    with connection.cursor() as cursor:
        cursor.execute(PER_USER_SQL, params)
        for variant, user, impressions, clicks in cursor.fetchall():
            row = data.setdefault(variant, VariantData())
            row.users.append(user)
            row.impressions.append(impressions)
            row.clicks.append(clicks)
        cursor.execute(ITEMS_SHOWN_SQL, params)
        for variant, items in cursor.fetchall():
            data.setdefault(variant, VariantData()).items_shown = items
        cursor.execute(CONVERSIONS_SQL, params)
        for variant, user, event_type, events, revenue in cursor.fetchall():
            row = data.setdefault(variant, VariantData())
            row.conversions.setdefault(event_type, {})[user] = events
            if revenue is not None:
                row.revenue[user] = row.revenue.get(user, 0.0) + float(revenue)  # a JSON number past floats: inf
    return data


def experiment_metrics_compute(*, experiment_id: int, now: datetime | None = None) -> list[VariantSnapshot]:
    """One snapshot per variant of the experiment, from the feedback tables as they are now."""
    experiment = Experiment.objects.prefetch_related("variants").get(pk=experiment_id)
    now = now or timezone.now()
    data = variants_data(experiment_id=experiment_id)
    catalogue = Item.objects.filter(is_hidden=False).count()
    variants = list(experiment.variants.all())
    control = data.get(experiment.control, VariantData())
    latest = snapshots_latest(experiment_id=experiment_id)
    snapshots = []
    for variant in variants:
        own = data.get(variant.name, VariantData())
        snapshots.append(
            VariantSnapshot(
                experiment=experiment,
                variant=variant,
                computed_at=now,
                users=len(own.users),
                impressions=int(sum(own.impressions)),
                clicks=int(sum(own.clicks)),
                items_shown=own.items_shown,
                coverage=own.items_shown / catalogue if catalogue else None,
                conversions={t: int(sum(per_user.values())) for t, per_user in sorted(own.conversions.items())},
                revenue=_revenue(own) if settings.RECSYS_REVENUE_ATTRIBUTE else None,
                statistics=_statistics(
                    experiment, variant, own, control, _prior(latest, variant.pk), treatments=len(variants) - 1
                ),
            )
        )
    with transaction.atomic():
        VariantSnapshot.objects.bulk_create(snapshots)
    return snapshots


def _revenue(data: VariantData) -> float | None:
    """The variant's revenue; None when it is past a float's range (a price such as 1e308 or a
    400-digit number in an item's attributes): no total, rather than an infinity that JSON cannot
    carry (every read of the experiment failed) or one that hides the other variants' figures."""
    try:
        total = math.fsum(data.revenue.values())  # raises where a plain sum would reach inf (or NaN)
    except (OverflowError, ValueError):
        return None
    return total if math.isfinite(total) else None


def _statistics(
    experiment: Experiment,
    variant: Variant,
    own: VariantData,
    control: VariantData,
    prior: dict[str, Any],
    *,
    treatments: int,
) -> dict[str, Any]:
    """The CTR with its interval; against the control, the always-valid test at the experiment's
    alpha shared among its ``treatments`` (Bonferroni) and the users still needed; per event type,
    conversions per impression with an interval."""
    alpha, mde = experiment.alpha, experiment.mde
    ctr, interval = ctr_estimate(own.counts(), alpha=alpha)
    each = comparison_alpha(alpha=alpha, treatments=max(1, treatments))
    out: dict[str, Any] = {
        "ctr": ctr,
        "ctr_interval": list(interval),
        "alpha": alpha,
        "comparison_alpha": each,
        "mde": mde,
    }
    if variant.name != experiment.control:
        # τ (the mixture's spread) stays what the first testable look fixed, so that every look
        # is of the same test: the p-value's running minimum is only valid across one τ.
        tau = prior.get("mixture_sd")
        prior_looks = [prior_look] if (prior_look := _prior_look(prior)) is not None else []
        comparison = variant_compare(
            control=control.counts(), treatment=own.counts(), alpha=each, mde=mde, looks=prior_looks, mixture_sd=tau
        )
        # Every variant's own band at the experiment's alpha, the control's included; only the difference
        # is tested at the shared alpha (the comparison's own bands were at alpha / treatments, so a
        # treatment's band was wider than the control's beside it on the same page).
        out.update(_jsonable({k: v for k, v in asdict(comparison).items() if k not in OWN_BANDS}))
        if treatments > 1:
            out["method"] += f"; {treatments} treatments, each tested at alpha / {treatments} = {each:.3g} (Bonferroni)"
        if tau is None and comparison.p_value is not None:
            tau = mde * abs(comparison.control_ctr)
        out["mixture_sd"] = tau
    out["conversion_rates"] = {}
    for event_type, per_user in sorted(own.conversions.items()):
        totals = own.per_impression(per_user)
        rate, rate_interval = conversion_rate(totals, alpha)
        entry: dict[str, Any] = {"rate": rate, "interval": rate_interval}
        if variant.name != experiment.control:
            compared = rate_compare(
                control=control.per_impression(control.conversions.get(event_type, {})),
                treatment=totals,
                alpha=each,
                mde=mde,
            )
            entry.update({"difference": compared.difference, "p_value": compared.p_value})
        out["conversion_rates"][event_type] = _jsonable(entry)
    return out


def _prior(latest: dict[int, VariantSnapshot], variant_id: int) -> dict[str, Any]:
    snapshot = latest.get(variant_id)
    return snapshot.statistics if snapshot is not None else {}


def conversion_rate(totals: UserTotals, alpha: float) -> tuple[float, list[float]]:
    # A rate in [0, 1] (no user converted more often than they were shown items) gets the Wilson
    # interval, which stays in [0, 1] and is not a point at zero conversions; repeated conversions
    # make it an unbounded ratio, whose Wald interval is clipped at 0 (a count is never negative).
    proportion = bool(np.all(totals.numerators <= totals.denominators))
    rate, (low, high) = rate_estimate(totals, alpha=alpha, proportion=proportion)
    return rate, [max(0.0, float(low)), float(high)]


def _jsonable(value: Any) -> Any:
    """Tuples to lists, infinities and NaN to None: JSON has neither."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _prior_look(stats: dict[str, Any]) -> PriorLook | None:
    """The previous look (its p-value and interval are already the running minimum and intersection
    over every look before it, so it stands for all of them); None before the first testable one."""
    interval = stats.get("difference_interval")
    if stats.get("p_value") is None or not interval or None in interval:
        return None
    return PriorLook(stats["p_value"], (interval[0], interval[1]))


def experiments_metrics_compute(*, experiment_ids: Iterable[int] | None = None) -> list[int]:
    """Snapshots for every running experiment, those stopped within the last hour (whose late
    clicks still arrive), and those whose last snapshot came before that hour was over (the beat
    did not run then: workers or PostgreSQL away), so that each stopped experiment's final figures
    cover its settled data; returns the experiments computed. One experiment that fails is logged
    and the others are still computed."""
    if experiment_ids is None:
        now = timezone.now()
        settled = now - timedelta(seconds=SETTLE_SECONDS)
        last = VariantSnapshot.objects.filter(experiment=OuterRef("pk")).order_by("-computed_at").values("computed_at")
        # (within a day of stopping: much later, expired impression partitions would make the final
        # figures worse than the ones shown)
        unsettled = Q(stopped_at__gte=now - FINAL_SNAPSHOT_WITHIN) & (
            Q(last_snapshot__isnull=True) | Q(last_snapshot__lt=F("stopped_at") + timedelta(seconds=SETTLE_SECONDS))
        )
        experiment_ids = (
            Experiment.objects.annotate(last_snapshot=Subquery(last[:1]))
            .filter(Q(status=ExperimentStatus.RUNNING) | Q(stopped_at__gte=settled) | unsettled)
            .values_list("pk", flat=True)
        )
    done = []
    for experiment_id in list(experiment_ids):
        try:
            experiment_metrics_compute(experiment_id=experiment_id)
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: stop here, not at the hard limit
        except Exception:
            logger.exception("metrics of experiment %s not computed", experiment_id)
            continue
        done.append(experiment_id)
    return done
