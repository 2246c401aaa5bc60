"""Reads of experiments: the running set each serving process keeps, and what the pages show."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Min, Q
from django.utils import timezone

from embeddings.models import ModelVersion
from experiments.assignment import variant_assign, weights_cumulative
from experiments.models import Experiment, ExperimentStatus, Variant, VariantSnapshot
from experiments.variants import VariantConfig, variant_config_parse
from recsys.errors import NotFound

# A stopped experiment's versions keep their tables this long, so that its winner can still be promoted.
PIN_STOPPED = timedelta(days=7)
# What serving never reads of a version (the same as the active pointer's read defers).
VERSION_DEFERRED = ("item_gram", "encoder_state", "centroids", "progress", "metrics", "baseline_metrics")


@dataclass(frozen=True)
class ServedVariant:
    """A variant as serving needs it: its config and the model version it names, already loaded."""

    name: str
    config: VariantConfig
    version: ModelVersion | None


@dataclass(frozen=True)
class RunningExperiment:
    id: int
    names: tuple[str, ...]
    cumulative: tuple[float, ...]
    variants: dict[str, ServedVariant]


@dataclass(frozen=True)
class Assignment:
    """The experiment and variant that serve one request; ``experiment_id`` None: no experiment
    runs there, and a promoted winner's configuration serves it."""

    experiment_id: int | None
    variant: ServedVariant


@dataclass(frozen=True)
class Placements:
    """Per placement (scenario, "" for requests that name none): the running experiment, and the
    configuration promoted there (used while no experiment runs)."""

    running: dict[str, RunningExperiment]
    promoted: dict[str, ServedVariant]


_lock = threading.Lock()
_placements: tuple[float, Placements] | None = None


def experiments_running() -> dict[str, RunningExperiment]:
    """Running experiments by scenario ("" for requests that name none)."""
    return _placements_cached().running


def _placements_cached() -> Placements:
    """Re-read from the database at most every RECSYS_EXPERIMENT_CACHE_SECONDS: a request starts
    with a dictionary lookup, not a query."""
    global _placements
    now = time.monotonic()
    with _lock:
        cached = _placements
    if cached is not None and now - cached[0] < settings.RECSYS_EXPERIMENT_CACHE_SECONDS:
        return cached[1]
    placements = Placements(_running_read(), _promoted_read())
    with _lock:
        _placements = (now, placements)
    return placements


def experiments_running_forget() -> None:
    """Forget the running set in this process (after a change made here); others re-read it within
    RECSYS_EXPERIMENT_CACHE_SECONDS, as they do the active model version."""
    global _placements
    with _lock:
        _placements = None


def _running_read() -> dict[str, RunningExperiment]:
    variants = list(
        Variant.objects.filter(experiment__status=ExperimentStatus.RUNNING)
        .select_related("experiment")
        .order_by("experiment_id", "id")
    )
    version_ids = {v.config.get("model_version") for v in variants} - {None}
    versions = ModelVersion.objects.defer(*VERSION_DEFERRED).in_bulk(list(version_ids))
    grouped: dict[int, list[Variant]] = {}
    for variant in variants:
        grouped.setdefault(variant.experiment_id, []).append(variant)
    running = {}
    for experiment_id, members in grouped.items():
        served = {}
        for variant in members:
            config, _ = variant_config_parse(variant.config)
            config = config or VariantConfig()  # stored configs were validated; never fail serving
            served[variant.name] = ServedVariant(variant.name, config, versions.get(config.model_version or 0))
        running[members[0].experiment.scenario or ""] = RunningExperiment(
            experiment_id,
            tuple(v.name for v in members),
            weights_cumulative([v.weight for v in members]),
            served,
        )
    return running


def _promoted_read() -> dict[str, ServedVariant]:
    """The winners' configurations serving their placements. Without the model version: promoting
    activated it, and later versions replace it as usual."""
    winners = Variant.objects.filter(experiment__serves_placement=True, name=F("experiment__winner")).select_related(
        "experiment"
    )
    promoted = {}
    for variant in winners:
        config, _ = variant_config_parse(variant.config)
        config = replace(config or VariantConfig(), model_version=None)
        promoted[variant.experiment.scenario or ""] = ServedVariant(variant.name, config, None)
    return promoted


def experiment_assign(*, scenario: str | None, user_external_id: str | None) -> Assignment | None:
    """The variant serving this user in the experiment running for the scenario; else the winner
    promoted there (``experiment_id`` None); None without a user (anonymous requests take part in
    no experiment) or when neither exists."""
    if not user_external_id:
        return None
    placements = _placements_cached()
    experiment = placements.running.get(scenario or "")
    if experiment is None:
        promoted = placements.promoted.get(scenario or "")
        return None if promoted is None else Assignment(None, promoted)
    name = variant_assign(
        experiment_id=experiment.id, user_id=user_external_id, names=experiment.names, cumulative=experiment.cumulative
    )
    return Assignment(experiment.id, experiment.variants[name])


def experiment_versions_pinned() -> set[int]:
    """Model versions that running experiments serve, those of experiments stopped within
    PIN_STOPPED and not promoted (so that the winner can still be promoted: promoting activates its
    version), and those of experiments promoted within RECSYS_PRUNE_GRACE_SECONDS (the losers'
    versions, which other processes may still serve for a moment): pruning keeps their tables."""
    now = timezone.now()
    stopped = Q(experiment__status=ExperimentStatus.STOPPED, experiment__stopped_at__gte=now - PIN_STOPPED)
    promoted = Q(
        experiment__status=ExperimentStatus.COMPLETED,
        experiment__stopped_at__gte=now - timedelta(seconds=settings.RECSYS_PRUNE_GRACE_SECONDS),
    )
    configs = Variant.objects.filter(Q(experiment__status=ExperimentStatus.RUNNING) | stopped | promoted).values_list(
        "config", flat=True
    )
    return {c["model_version"] for c in configs if isinstance(c, dict) and isinstance(c.get("model_version"), int)}


def experiments_read_from() -> datetime | None:
    """The start of the oldest experiment whose figures are still computed (running, or stopped
    within the metrics' final-snapshot window): impression retention keeps everything since."""
    from experiments.metrics import FINAL_SNAPSHOT_WITHIN

    still = Q(status=ExperimentStatus.RUNNING) | Q(stopped_at__gte=timezone.now() - FINAL_SNAPSHOT_WITHIN)
    return Experiment.objects.filter(still).aggregate(oldest=Min("started_at"))["oldest"]


def experiment_get(*, experiment_id: int) -> Experiment:
    experiment = Experiment.objects.prefetch_related("variants").filter(pk=experiment_id).first()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} does not exist", details={"id": [str(experiment_id)]})
    return experiment


def experiments_list(*, status: str | None = None, limit: int = 50) -> list[Experiment]:
    experiments = Experiment.objects.prefetch_related("variants")
    if status:
        experiments = experiments.filter(status=status)
    return list(experiments.order_by("-id")[:limit])


def snapshots_latest(*, experiment_id: int) -> dict[int, VariantSnapshot]:
    """Per variant id, its most recent snapshot."""
    latest = (
        VariantSnapshot.objects.filter(experiment_id=experiment_id)
        .order_by("variant_id", "-computed_at")
        .distinct("variant_id")
    )
    return {s.variant_id: s for s in latest.select_related("variant")}


def snapshots_history(*, experiment_id: int, limit: int = 2_000) -> list[VariantSnapshot]:
    """Snapshots oldest first, for the chart (the newest ``limit`` of them)."""
    rows = list(
        VariantSnapshot.objects.filter(experiment_id=experiment_id)
        .select_related("variant")
        .order_by("-computed_at")[:limit]
    )
    return rows[::-1]


def model_version_ctr() -> list[dict[str, object]]:
    """CTR per model version from the latest snapshot of each variant of experiments that ran in the
    last week. A variant that names a model version counts for it; one that names none served the
    active version of its time, which is not recorded, so it is listed as "active at the time". Only
    variants serving a version's own answers count (not popular, content, shuffled, ranked or
    diversified ones: a deliberately shuffled baseline lowered its version's row); placements are
    pooled, so rows of versions tested on different placements are not like for like."""
    since = timezone.now() - timedelta(days=7)
    recent = Experiment.objects.filter(Q(status=ExperimentStatus.RUNNING) | Q(stopped_at__gte=since))
    totals: dict[int | None, list[int]] = {}
    for experiment_id in recent.values_list("pk", flat=True):
        for snapshot in snapshots_latest(experiment_id=experiment_id).values():
            config = snapshot.variant.config
            version = config.get("model_version")
            if config.get("strategy", "collaborative") != "collaborative" or config.get("diversity"):
                continue  # not the version's own answer: popular, content, shuffled, ranked, re-ranked
            row = totals.setdefault(version if isinstance(version, int) else None, [0, 0, 0])
            row[0] += snapshot.impressions
            row[1] += snapshot.clicks
            row[2] += 1
    return [
        {"version": version, "impressions": i, "clicks": c, "ctr": c / i if i else None, "variants": n}
        for version, (i, c, n) in sorted(totals.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    ]
