"""Celery entry points for training: thin wrappers that take ids and call a service."""

from __future__ import annotations

import logging

from celery import shared_task

from embeddings import runs, services
from embeddings.models import Kind

logger = logging.getLogger(__name__)

# The hard limit stays below the broker's visibility timeout (4 h) so Redis never re-delivers
# a run that is still going; a killed run stops its heartbeat, the reaper fails it, the next proceeds.
TRAIN_LIMITS = {"soft_time_limit": 3 * 3600, "time_limit": 3 * 3600 + 300}


@shared_task(acks_late=False, **TRAIN_LIMITS)
def collaborative_model_train(version_id: int) -> dict[str, object]:
    version = services.collaborative_model_train(version_id=version_id)
    return {"version": version.pk, "status": version.status}


@shared_task(acks_late=False, **TRAIN_LIMITS)
def collaborative_model_retrain() -> dict[str, object] | None:
    """The scheduled run: claims a version (skips quietly while another run holds the lease)."""
    try:
        version = services.collaborative_version_create()
    except runs.TrainingAlreadyRunning:
        return None
    return collaborative_model_train(version.pk)


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def training_runs_reap() -> list[int]:
    """Beat: runs whose worker stopped sending heartbeats are marked failed; old versions' tables
    are pruned once their grace has passed (``runs.versions_tidy``); a run that stored its
    work but was never judged (its worker died, or PostgreSQL went away, before activation) has its
    task sent again, which then only concludes it. Idempotent."""
    reaped = runs.runs_reap()
    for version in runs.runs_unconcluded():
        task = content_model_build if version.kind == Kind.CONTENT else collaborative_model_train
        logger.warning("%s version %s stored its work but was never judged; concluding it", version.kind, version.pk)
        try:
            task.delay(version.pk)
        except Exception:  # the broker away: the next beat tries again
            logger.warning("version %s's task could not be sent again", version.pk, exc_info=True)
        else:
            runs.run_resent(version)
    try:  # last: its trouble must not keep the runs above from being reaped and concluded
        runs.versions_tidy()
    except Exception:
        logger.exception("tidying the versions' tables failed; the next beat tries again")
    return reaped


@shared_task(acks_late=True, soft_time_limit=300, time_limit=360)
def users_fold_in() -> int:
    """Idempotent (recomputes vectors from stored interactions), so late acks are safe."""
    from embeddings.freshness import users_fold_in_pending

    return users_fold_in_pending()


@shared_task(acks_late=True, soft_time_limit=300, time_limit=360)
def users_fold_in_sweep() -> int:
    """Beat: users whose fold-in could not be queued (Redis away) or was lost. Idempotent."""
    from django.conf import settings

    from embeddings.freshness import users_fold_in_sweep as sweep

    return sweep(lookback_seconds=settings.RECSYS_FOLD_IN_SWEEP_LOOKBACK_SECONDS)


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def popularity_refresh() -> int:
    """Idempotent: rewrites every item's popularity score from the stored interactions."""
    from embeddings.popularity import popularity_refresh as refresh

    return refresh()


@shared_task(acks_late=False, **TRAIN_LIMITS)
def content_model_build(version_id: int) -> dict[str, object]:
    from embeddings.content import content_model_build as build

    version = build(version_id=version_id)
    return {"version": version.pk, "status": version.status}


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def content_items_encode(continuation: bool = False) -> int:
    """Idempotent (encodes whatever is still marked), so late acks are safe."""
    from embeddings.content import content_items_encode as encode

    return encode(continuation=continuation)


@shared_task(acks_late=True, soft_time_limit=3 * 3600, time_limit=3 * 3600 + 300)
def content_sweep() -> dict[str, object]:
    """Beat: a first or changed-encoder build, else the items that are still marked."""
    from embeddings.content import content_sweep as sweep

    return sweep()


@shared_task(acks_late=True, soft_time_limit=60, time_limit=90)
def embedding_maps_resume() -> list[int]:
    """Beat: the active versions' maps whose request was lost are asked for again."""
    from embeddings.maps import embedding_maps_resume as resume

    return resume()


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def embedding_map_compute(version_id: int) -> dict[str, object]:
    """The admin's embedding map: idempotent (recomputes the version's stored points)."""
    from embeddings.maps import embedding_map_compute as compute

    emap = compute(version_id=version_id)
    if emap is None:
        return {"version": version_id, "state": "deleted", "points": 0}
    return {"version": version_id, "state": emap.state, "points": emap.sample_size}


@shared_task(acks_late=True, soft_time_limit=300, time_limit=360)
def cold_items_place() -> int:
    """Idempotent (maps whatever the active version still lacks), so late acks are safe."""
    from embeddings.cold_placement import cold_items_place as place

    return place()
